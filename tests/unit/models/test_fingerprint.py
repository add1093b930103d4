"""The verifier fingerprint tells apart two models of the same shape, and does not tell apart
copies of one model (moved, re-saved in bf16, config re-written by another library version);
it works on local dirs, cached hub names and models without some of its parts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from speculators.models.fingerprint import verifier_fingerprint


def fp(path: Path):
    return verifier_fingerprint(str(path), "--verifier-name-or-path")


def test_another_model_of_the_same_shape_differs_in_its_weights(tiny_llama, tmp_path):
    from conftest import build_tiny_llama

    other = build_tiny_llama(tmp_path / "reseeded", seed=1)
    assert fp(tiny_llama).differences(fp(other)) == ["weights (embeddings, lm_head, final norm)"]


def test_copies_of_one_model_match(tiny_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    moved = Path(shutil.copytree(tiny_llama, tmp_path / "moved"))
    config = json.loads((moved / "config.json").read_text())
    config["transformers_version"] = "4.0.0"  # re-saved by another version
    (moved / "config.json").write_text(json.dumps(config, indent=4))
    assert fp(moved) == fp(tiny_llama)
    # The same weights in bf16 (how models are usually shipped) match the fp32 original.
    bf16 = tmp_path / "bf16"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16)
    model.save_pretrained(bf16)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, bf16 / name)
    assert fp(bf16).weights == fp(tiny_llama).weights


def test_tokenizer_and_config_changes_are_named(tiny_llama, tmp_path):
    other = Path(shutil.copytree(tiny_llama, tmp_path / "other"))
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: same size, other ids
    (other / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((other / "config.json").read_text())
    config["rope_theta"] = 1234.0
    (other / "config.json").write_text(json.dumps(config))
    assert fp(tiny_llama).differences(fp(other)) == ["tokenizer vocabulary", "config.json"]


def test_missing_parts_are_not_compared(tiny_llama, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_llama / "config.json", bare / "config.json")
    got = fp(bare)  # no weights, no tokenizer: only the config can be compared
    assert got.weights is None and got.tokenizer is None and got.config
    assert got.differences(fp(tiny_llama)) == []


def test_tied_embeddings(tmp_path):
    from conftest import build_tiny_llama

    tied = build_tiny_llama(tmp_path / "tied", tie_word_embeddings=True)
    assert fp(tied).weights and fp(tied) == fp(tied)


def test_a_cached_hub_name(tiny_llama, tmp_path, monkeypatch):
    """The layout huggingface_hub keeps (refs/main -> snapshots/<commit>/), read offline."""
    cache = tmp_path / "hub"
    repo = cache / "models--someorg--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_llama, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert verifier_fingerprint("someorg/tiny", "--verifier-name-or-path") == fp(tiny_llama)
