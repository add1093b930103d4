"""`speculators datagen` records which verifier made the data, checks every output location
before any work, never mixes samples of a changed model into a dir, cleans what a killed run
left, and after `kill -9` the same command finishes with the same files as one run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_CONVERSATIONS, build_tiny_llama, write_conversations
from killpoint import run_killed
from typer.testing import CliRunner

from speculators.artifacts.sample_files import list_sample_files
from speculators.artifacts.token_freq import load_token_freq_meta
from speculators.cli import app
from speculators.models.fingerprint import verifier_fingerprint


def invoke(*args) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in res.output
    return res.exit_code, " ".join(res.output.split())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datagen-checks")
    write_conversations(root / "convs.jsonl", SAMPLE_CONVERSATIONS * 2)
    return root


def args(root: Path, model: Path, out: str, *extra) -> list:
    return [
        "datagen", "--target-model-path", model, "--train-data-path", root / "convs.jsonl",
        "--output-dir", root / out, "--token-freq-path", root / out / "token_freq.pt",
        "--cache-dir", root / "cache", "--seq-length", "48", "--batch-size", "2", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(root, tiny_llama) -> Path:
    code, out = invoke(*args(root, tiny_llama, "reference"))
    assert code == 0, out
    return root / "reference"


def sample_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in list_sample_files(out)}


def test_the_verifier_is_recorded_in_data_config_and_token_freq(reference, tiny_llama):
    fp = verifier_fingerprint(str(tiny_llama), "--target-model-path")
    recorded = json.loads((reference / "data_config.json").read_text())["model"]
    assert recorded["verifier_fingerprint"] == fp.model_dump()
    meta = load_token_freq_meta(reference / "token_freq.pt")
    assert meta is not None and meta.tokenizer == fp.tokenizer


def test_output_locations_are_checked_before_any_work(root, tiny_llama):
    (root / "a-file").write_text("mine")
    cases = {
        "--output-dir": ["--output-dir", root / "a-file"],
        "--cache-dir": ["--cache-dir", root / "a-file" / "cache"],
        "--token-freq-path": ["--token-freq-path", root],
    }
    for flag, extra in cases.items():
        code, out = invoke(*args(root, tiny_llama, "never"), *extra)
        assert code == 2 and flag in out, out
        assert (root / "a-file").read_text() == "mine"
        assert not (root / "never").exists()
    code, out = invoke(
        *args(root, tiny_llama, "never"), "--token-freq-path", root / "never/data_0.pt"
    )
    assert code == 2 and "name of a sample file" in out
    code, out = invoke(*args(root, tiny_llama, "never"), "--seed", "-1")
    assert code == 2 and "--seed" in out and not (root / "never").exists()


def test_a_model_changed_under_the_same_path_is_not_mixed_in(root, tiny_llama, tmp_path):
    model = Path(shutil.copytree(tiny_llama, tmp_path / "model"))
    code, out = invoke(*args(root, model, "changing", "--max-samples", "3"))
    assert code == 0, out
    (root / "changing" / "data_2.pt").unlink()  # a resume is due...
    before = sample_hashes(root / "changing")
    retrained = build_tiny_llama(tmp_path / "retrained", seed=1)
    shutil.copy(retrained / "model.safetensors", model / "model.safetensors")  # ...of new weights
    code, out = invoke(*args(root, model, "changing", "--max-samples", "3"))
    assert code == 2 and "changed since its samples were written" in out and "--overwrite" in out
    assert sample_hashes(root / "changing") == before
    code, out = invoke(*args(root, model, "changing", "--max-samples", "3", "--overwrite"))
    assert code == 0, out
    assert len(list_sample_files(root / "changing")) == 3


def test_temps_of_a_killed_run_are_cleaned_and_others_kept(root, tiny_llama, reference):
    out = root / "tidy"
    shutil.copytree(reference, out)
    (out / "data_1.pt").unlink()
    for name in (".tmp-data_1.pt.ab12", ".tmp-token_freq.pt.cd34", ".tmp-notes.txt.1"):
        (out / name).write_bytes(b"half")
    code, text = invoke(*args(root, tiny_llama, "tidy"))
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".tmp-notes.txt.1"]
    assert sample_hashes(out) == sample_hashes(reference)


def test_a_token_freq_file_in_the_output_dir_is_not_read_as_a_sample(reference, tmp_path):
    data = Path(shutil.copytree(reference, tmp_path / "data"))
    shutil.copy(data / "token_freq.pt", data / "counts.pt")  # any name, as the refusal suggests
    assert "counts.pt" not in [p.name for p in list_sample_files(data)]


@pytest.mark.parametrize("nth", [1, 4])
def test_killed_mid_run_the_same_command_finishes_with_the_same_files(
    root, tiny_llama, reference, nth
):
    out = f"killed-{nth}"
    # SIGKILL right after the nth sample file was renamed into place.
    run_killed(args(root, tiny_llama, out), match=r"data_\d+\.pt$", nth=nth)
    done = sample_hashes(root / out)
    assert 1 <= len(done) < len(sample_hashes(reference))
    code, text = invoke(*args(root, tiny_llama, out))
    assert code == 0, text
    assert sample_hashes(root / out) == sample_hashes(reference)
    assert torch.load(root / out / "token_freq.pt") == torch.load(reference / "token_freq.pt")
    strip = lambda d: {k: v for k, v in d.items() if k not in ("generated_at", "generation")}  # noqa: E731
    configs = [json.loads((d / "data_config.json").read_text()) for d in (root / out, reference)]
    assert strip(configs[0])["data"] == strip(configs[1])["data"]
    assert configs[0]["model"] == configs[1]["model"]
    assert not [p for p in (root / out).iterdir() if p.name.startswith(".")]
