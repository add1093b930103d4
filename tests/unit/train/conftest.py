"""Training test data: real hidden states of the tiny random Llama, written as datagen would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from speculators.artifacts.data_config import (
    DataConfig,
    format_schema,
    save_data_config,
)
from speculators.artifacts.samples import sample_path, save_sample
from speculators.artifacts.vocab_mapping import save_vocab_mapping

LAYER_IDS = [1, 2, 3, 5]  # tiny_llama has 6 layers; the last id is its last layer


def write_data_config(out: Path, verifier: Path, hidden: int, layer_ids: list[int], n: int) -> None:
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
    save_data_config(out, config)


@torch.no_grad()
def make_training_data(
    verifier: Path, out: Path, num_samples: int = 12, seed: int = 0, layer_ids=LAYER_IDS
) -> Path:
    """Sample files with the verifier's real hidden states for short token sequences that repeat
    a pattern (so the draft has something learnable), plus data_config.json."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(verifier).eval()
    captured = {}
    hook = model.model.layers[-1].register_forward_hook(
        lambda m, i, o: captured.__setitem__("last", o[0] if isinstance(o, tuple) else o)
    )
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    for idx in range(num_samples):
        length = int(torch.randint(20, 40, (1,), generator=g))
        period = torch.randint(10, vocab, (5,), generator=g)
        ids = period.repeat(length // 5 + 1)[:length]
        out_states = model(ids[None], output_hidden_states=True).hidden_states
        states = [out_states[i + 1][0] for i in layer_ids[:-1]] + [captured["last"][0]]
        mask = torch.zeros(length, dtype=torch.long)
        mask[length // 4 :] = 1
        save_sample(sample_path(out, idx), ids, states, mask)
    hook.remove()
    write_data_config(out, verifier, model.config.hidden_size, layer_ids, num_samples)
    return out


def write_full_vocab(out: Path, vocab_size: int, draft_vocab_size: int | None = None):
    """A d2t/t2d pair: the first `draft_vocab_size` ids (default: all of them)."""
    n = draft_vocab_size or vocab_size
    target_ids = np.arange(n, dtype=np.int64)
    t2d = np.zeros(vocab_size, dtype=np.bool_)
    t2d[target_ids] = True
    return save_vocab_mapping(out, target_ids - np.arange(n), t2d)


@pytest.fixture(scope="session")
def train_data(tiny_llama, tmp_path_factory) -> Path:
    return make_training_data(tiny_llama, tmp_path_factory.mktemp("train-data"))


@pytest.fixture(scope="session")
def tiny_vocab(tiny_llama, tmp_path_factory) -> tuple[Path, Path]:
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_llama).vocab_size
    return write_full_vocab(tmp_path_factory.mktemp("vocab"), vocab, vocab - 40)
