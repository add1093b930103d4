"""`speculators datagen` end to end on a tiny random Llama: files, resume, refusals, caching and
every bad input of issue 3 (exit 2, a message naming the flag or file, nothing written lost)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from speculators.artifacts.sample_files import list_sample_files
from speculators.artifacts.samples import load_sample
from speculators.cli import app
from speculators.cli.common import expand_multi_value_flags

CONVERSATIONS = [
    {"conversations": [{"from": "human", "value": "Hello!"}, {"from": "gpt", "value": "Hello!"}]},
    {"messages": [{"role": "user", "content": "What is the capital of France?"}]},  # no assistant
    {
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Tell me a story about a cat."},
            {"role": "assistant", "content": "A cat and a dog jumped over the lazy fox."},
            {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": "Then they ate numbers 1 2 3."},
        ]
    },
    *[
        {
            "conversations": [
                {"from": "human", "value": "Count " + " ".join(map(str, range(n)))},
                {"from": "gpt", "value": "The quick brown fox jumps over the lazy dog. " * n},
            ]
        }
        for n in (1, 3, 5, 8, 2, 13)
    ],
]

# Every key of the reference's data_config.json example (reference README, "Data Config File").
REFERENCE_KEYS = {
    "": ["version", "generated_at", "speculators_version", "reproducibility", "model", "data",
         "hidden_states", "generation", "format"],
    "reproducibility": ["command", "package_versions", "gpu"],
    "reproducibility.package_versions": ["torch", "vllm", "transformers", "speculators"],
    "model": ["target_model_path", "tensor_parallel_size", "max_model_len",
              "gpu_memory_utilization", "hidden_size"],
    "data": ["train_data_path", "seq_length", "max_samples", "num_samples", "seed",
             "chat_template_note"],
    "hidden_states": ["layer_ids", "description"],
    "generation": ["cache_dir"],
    "format": ["file_pattern", "data_format_version", "schema"],
}  # fmt: skip


def invoke(*args: str):
    return CliRunner().invoke(app, expand_multi_value_flags([str(a) for a in args]))


def snapshot(*paths: Path) -> dict[str, str]:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")))]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datagen")
    (root / "convs.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    return root


def flags(workdir: Path, model: Path, out: str = "out", *extra: str) -> list[str]:
    return [
        "datagen",
        "--target-model-path", model,
        "--train-data-path", workdir / "convs.jsonl",
        "--output-dir", workdir / out,
        "--token-freq-path", workdir / out / "token_freq.pt",
        "--cache-dir", workdir / "cache",
        "--seq-length", "48",
        "--batch-size", "3",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def generated(workdir, tiny_llama) -> Path:
    res = invoke(*flags(workdir, tiny_llama, "out", "--layer-ids", "1", "3", "4", "5"))
    assert res.exit_code == 0, res.output
    return workdir / "out"


def test_outputs(generated, tiny_llama):
    from transformers import AutoTokenizer

    config = json.loads((generated / "data_config.json").read_text())
    for section, keys in REFERENCE_KEYS.items():
        block = config
        for part in filter(None, section.split(".")):
            block = block[part]
        assert set(keys) <= set(block), section
    assert config["hidden_states"]["layer_ids"] == [1, 3, 4, 5]
    assert config["hidden_states"]["vllm_aux_layer_ids"] == [2, 4, 5]
    assert config["generation"]["backend"] == "transformers"
    assert config["format"]["schema"]["hidden_states"]["num_tensors"] == 4
    files = list_sample_files(generated)
    assert len(files) == config["data"]["num_samples"] == len(CONVERSATIONS) - 1  # one skipped

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rendered = []
    for conv in CONVERSATIONS:
        turns = conv.get("messages") or [
            {"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]}
            for t in conv["conversations"]
        ]
        text = tokenizer.apply_chat_template(turns, tokenize=False)
        rendered.append(tokenizer(text, add_special_tokens=False)["input_ids"][:48])
    counts: dict[int, int] = {}
    for path in files:
        s = load_sample(path)
        assert s.input_ids.tolist() in rendered  # every sample is one truncated conversation
        assert len(s.aux_hidden_states) == 3 and s.last_hidden_state.shape[1] == 32
        for t in s.input_ids[s.loss_mask == 1].tolist():
            counts[t] = counts.get(t, 0) + 1
    assert torch.load(generated / "token_freq.pt") == counts


def test_resume_after_deleting_files_gives_the_same_files(generated, workdir, tiny_llama):
    before = snapshot(*list_sample_files(generated))
    for name in ("data_1.pt", "data_4.pt", "data_7.pt"):
        (generated / name).unlink()
    res = invoke(*flags(workdir, tiny_llama, "out", "--layer-ids", "1", "3", "4", "5"))
    assert res.exit_code == 0, res.output
    assert "3 generated now" in res.output
    assert snapshot(*list_sample_files(generated)) == before


def test_config_mismatch_is_refused_then_overwritten(generated, workdir, tiny_llama):
    before = snapshot(generated)
    res = invoke(*flags(workdir, tiny_llama, "out"))  # default layer ids now
    assert res.exit_code == 2
    assert "--output-dir" in res.output and "--layer-ids was [1, 3, 4, 5]" in res.output
    assert "--overwrite" in res.output
    assert snapshot(generated) == before
    # Another output dir, same token_freq.pt: refused too.
    other = flags(workdir, tiny_llama, "other")
    other[other.index("--token-freq-path") + 1] = str(generated / "token_freq.pt")
    res = invoke(*other, "--seed", "3")
    assert res.exit_code == 2 and "--token-freq-path" in res.output
    assert snapshot(generated) == before


def test_foreign_samples_are_refused(workdir, tiny_llama):
    foreign = workdir / "foreign"
    foreign.mkdir()
    torch.save({"something": 1}, foreign / "data_0.pt")
    res = invoke(*flags(workdir, tiny_llama, "foreign"))
    assert res.exit_code == 2
    assert "holds 1 sample files but no data_config.json" in " ".join(res.output.split())
    assert torch.load(foreign / "data_0.pt") == {"something": 1}


def test_overwrite_replaces(workdir, tiny_llama):
    res = invoke(*flags(workdir, tiny_llama, "ow", "--max-samples", "3"))
    assert res.exit_code == 0, res.output
    res = invoke(*flags(workdir, tiny_llama, "ow", "--max-samples", "2", "--overwrite"))
    assert res.exit_code == 0, res.output
    config = json.loads((workdir / "ow" / "data_config.json").read_text())
    assert config["data"]["max_samples"] == 2
    assert len(list_sample_files(workdir / "ow")) == config["data"]["num_samples"] <= 2


def test_tokenized_data_is_cached_by_fingerprint(workdir, tiny_llama, monkeypatch):
    from speculators.config import DatagenConfig
    from speculators.datagen import preprocess
    from speculators.datagen.run import run_datagen

    def config(seq_length: int) -> DatagenConfig:
        return DatagenConfig(
            target_model_path=str(tiny_llama),
            train_data_path=str(workdir / "convs.jsonl"),
            output_dir=workdir / f"cached-{seq_length}",
            token_freq_path=workdir / f"cached-{seq_length}" / "token_freq.pt",
            cache_dir=workdir / "cache",
            seq_length=seq_length,
        )

    run_datagen(config(40))

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(preprocess, "tokenize_conversation", fail)
    shutil.rmtree(workdir / "cached-40")
    run_datagen(config(40))  # same tokenizer, data and seq_length: read from the cache
    with pytest.raises(AssertionError, match="tokenized again"):
        run_datagen(config(41))


def test_parallel_tokenization_equals_sequential(workdir, tiny_llama, monkeypatch):
    from transformers import AutoTokenizer

    from speculators.datagen import preprocess
    from speculators.sources import load_raw_data

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    raw = load_raw_data(str(workdir / "convs.jsonl"), None)
    sequential = preprocess.tokenize_dataset(raw, tokenizer, 30, None, 0, workdir / "seq")
    monkeypatch.setattr(preprocess, "_num_proc", lambda num_rows: 2)  # 2 worker processes
    parallel = preprocess.tokenize_dataset(raw, tokenizer, 30, None, 0, workdir / "par")
    assert parallel.kept == sequential.kept
    assert [parallel.sample(i) for i in range(parallel.num_samples)] == [
        sequential.sample(i) for i in range(sequential.num_samples)
    ]


@pytest.fixture(scope="module")
def no_template_model(tiny_llama, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("no-template") / "model"
    shutil.copytree(tiny_llama, path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return path


LAYERS = ["--layer-ids", "1", "3", "4", "5"]  # as in `generated`, so only the bad input differs
BAD_INPUTS = {
    # case: (flags replacing or added to the `generated` run's, text the error must contain)
    "layer id out of range": (
        ["--layer-ids", "1", "2", "9"],
        ["--layer-ids 1 2 9", "6 decoder layers", "automatic choice [2, 3, 4, 5]"],
    ),
    "max samples": ([*LAYERS, "--max-samples", "0"], ["--max-samples"]),
    "unknown dataset": ([*LAYERS, "--train-data-path", "nosuchdata"], ["unknown dataset name"]),
    "missing model": ([*LAYERS, "--target-model-path", "/nonexistent/model"], ["/nonexistent"]),
    "vllm missing": ([*LAYERS, "--backend", "vllm"], ["pip install 'speculators[datagen]'"]),
    "no gpu": ([*LAYERS, "--device", "cuda"], ["--device cuda"]),
    "no chat template": ([*LAYERS, "--target-model-path", "{no_template}"], ["no chat template"]),
    "malformed line": ([*LAYERS, "--train-data-path", "{bad}"], ["bad.jsonl, line 2"]),
    "empty data": ([*LAYERS, "--train-data-path", "{empty}"], ["is empty"]),
    "no assistant": ([*LAYERS, "--train-data-path", "{user_only}"], ["2 have no assistant turn"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(case, generated, workdir, tiny_llama, no_template_model):
    if case == "no gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    paths = {
        "bad": workdir / "bad.jsonl",
        "empty": workdir / "empty.jsonl",
        "user_only": workdir / "user-only.jsonl",
        "no_template": no_template_model,
    }
    paths["bad"].write_text(json.dumps(CONVERSATIONS[0]) + "\n{oops\n")
    paths["empty"].write_text("\n")
    paths["user_only"].write_text((json.dumps(CONVERSATIONS[1]) + "\n") * 2)
    extra, expected = BAD_INPUTS[case]
    extra = [e.format(**paths) for e in extra]
    # Later flags win in Click, so the bad value overrides the `generated` run's value.
    before = snapshot(generated)
    res = invoke(*flags(workdir, tiny_llama, "out"), *extra)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for text in expected:
        assert text in " ".join(res.output.split()), res.output
    assert snapshot(generated) == before


def test_fp8_hidden_states_half_the_bytes_and_train(generated, workdir, tiny_llama, tmp_path):
    """--hidden-states-dtype fp8: the same samples as bf16 within e4m3's precision in about
    half the bytes, recorded in data_config.json; a rerun with bf16 is refused (files of two
    precisions are never mixed); training reads the fp8 files end to end."""
    fp8 = workdir / "out-fp8"
    ids = ("--layer-ids", "1", "3", "4", "5")
    res = invoke(*flags(workdir, tiny_llama, "out-fp8", *ids, "--hidden-states-dtype", "fp8"))
    assert res.exit_code == 0, res.output
    config = json.loads((fp8 / "data_config.json").read_text())
    assert config["generation"]["hidden_states_dtype"] == "fp8"
    assert config["format"]["schema"]["hidden_states"]["dtype"] == "list[torch.float8_e4m3fn]"
    record = torch.load(fp8 / "data_0.pt")
    assert record["hidden_states"][0].dtype == torch.float8_e4m3fn
    assert len(record["hidden_states_scale"]) == 4
    for a_path, b_path in zip(list_sample_files(generated), list_sample_files(fp8)):
        a, b = load_sample(a_path), load_sample(b_path)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
        for x, y in zip([*a.aux_hidden_states, a.last_hidden_state],
                        [*b.aux_hidden_states, b.last_hidden_state]):  # fmt: skip
            assert (y.float() - x.float()).norm() / x.float().norm() < 0.05

    def hidden_bytes(path: Path) -> int:  # what the files store of the states (and scales)
        r = torch.load(path)
        tensors = [*r["hidden_states"], *r.get("hidden_states_scale", [])]
        return sum(t.numel() * t.element_size() for t in tensors)

    bf16_bytes = sum(hidden_bytes(f) for f in list_sample_files(generated))
    fp8_bytes = sum(hidden_bytes(f) for f in list_sample_files(fp8))
    assert fp8_bytes <= 0.5 * bf16_bytes * (1 + 4 / 32)  # + one fp32 scale per row of 32

    before = snapshot(fp8)
    res = invoke(*flags(workdir, tiny_llama, "out-fp8", *ids))  # bf16 into the fp8 dir
    assert res.exit_code == 2 and "--hidden-states-dtype was 'fp8', now 'bf16'" in res.output
    assert snapshot(fp8) == before

    vocab = invoke(
        "vocab", "--token-freq-path", fp8 / "token_freq.pt", "--draft-vocab-size", "64",
        "--target-model-path", tiny_llama, "--output-path", tmp_path / "vocab",
    )  # fmt: skip
    assert vocab.exit_code == 0, vocab.output
    train = invoke(
        "train", "--verifier-name-or-path", tiny_llama, "--data-path", fp8,
        "--d2t-path", tmp_path / "vocab" / "d2t.npy", "--t2d-path", tmp_path / "vocab" / "t2d.npy",
        "--save-path", tmp_path / "ckpt", "--epochs", "1", "--total-seq-len", "128",
        "--num-workers", "0", "--device", "cpu", "--val-fraction", "0",
    )  # fmt: skip
    assert train.exit_code == 0, train.output
    assert (tmp_path / "ckpt" / "0" / "model.safetensors").is_file()
