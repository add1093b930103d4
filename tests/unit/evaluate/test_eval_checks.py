"""`speculators eval` checks the verifier against the fingerprint the draft records, never
replaces earlier results unless --overwrite, names a damaged checkpoint, checks its output dir
before decoding, and after a kill the same command gives the same results."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from draft_checkpoints import make_draft_checkpoint
from killpoint import Killed
from typer.testing import CliRunner

from speculators.cli import app
from speculators.models.fingerprint import verifier_fingerprint


@pytest.fixture(scope="module")
def draft(tiny_llama: Path, tmp_path_factory) -> Path:
    """A draft whose config.json records its verifier's fingerprint, as training writes it."""
    path = make_draft_checkpoint(tiny_llama, tmp_path_factory.mktemp("fp-draft") / "0")
    config = json.loads((path / "config.json").read_text())
    fp = verifier_fingerprint(str(tiny_llama), "x").model_dump()
    config["speculators_config"]["verifier"]["fingerprint"] = fp
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        '{"prompt": "Hello! How can I help you today?"}\n{"prompt": "def add(a, b):"}\n'
    )
    return path


def evaluate(draft: Path, out: Path, prompts: Path, *extra) -> tuple[int, str]:
    args = ["eval", draft, "--data-path", prompts, "--num-prompts", 2, "--max-new-tokens", 6]
    res = CliRunner().invoke(app, [str(a) for a in [*args, "--output-dir", out, *extra]])
    assert "Traceback" not in res.output
    return res.exit_code, " ".join(res.output.split())


EARLIER = '{"mean_acceptance_length": 2.5}'


@pytest.fixture
def earlier(tmp_path: Path) -> Path:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval_results.json").write_text(EARLIER)
    return out


def test_another_verifier_of_the_same_shape_is_named(draft, prompts, earlier, tmp_path):
    from conftest import build_tiny_llama

    other = build_tiny_llama(tmp_path / "reseeded", seed=1)
    code, out = evaluate(draft, earlier, prompts, "--verifier-name-or-path", other, "--overwrite")
    assert code == 2 and str(other) in out and "trained on the verifier" in out
    assert "--allow-verifier-mismatch" in out
    assert (earlier / "eval_results.json").read_text() == EARLIER
    code, out = evaluate(
        draft, tmp_path / "anyway", prompts, "--verifier-name-or-path", other,
        "--allow-verifier-mismatch",
    )  # fmt: skip
    assert code == 0 and "evaluating anyway" in out


def test_earlier_results_are_kept_unless_overwrite(draft, prompts, earlier):
    code, out = evaluate(draft, earlier, prompts)
    assert code == 2 and "already holds eval_results.json" in out and "--overwrite" in out
    assert (earlier / "eval_results.json").read_text() == EARLIER
    code, out = evaluate(draft, earlier, prompts, "--overwrite")
    assert code == 0 and json.loads((earlier / "eval_results.json").read_text())["num_prompts"] == 2


def test_an_output_dir_that_is_a_file_is_refused_before_decoding(draft, prompts, tmp_path):
    (tmp_path / "f").write_text("mine")
    code, out = evaluate(draft, tmp_path / "f", prompts)
    assert code == 2 and "--output-dir" in out and "is a file" in out and "acceptance" not in out
    assert (tmp_path / "f").read_text() == "mine"


def test_a_truncated_checkpoint_and_a_negative_seed(draft, prompts, tmp_path):
    broken = Path(shutil.copytree(draft, tmp_path / "broken"))
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, out = evaluate(broken, tmp_path / "e", prompts)
    assert code == 2 and "model.safetensors: cannot read the draft weights" in out
    code, out = evaluate(draft, tmp_path / "e", prompts, "--seed", -1)
    assert code == 2 and "--seed" in out


STABLE = ("seconds", "tokens_per_second")  # the only numbers that differ between two runs


@pytest.mark.parametrize("overwrite", [False, True])
def test_killed_before_its_results_the_same_command_gives_the_same_results(
    draft, prompts, tmp_path, monkeypatch, overwrite
):
    reference = tmp_path / "reference"
    assert evaluate(draft, reference, prompts)[0] == 0
    out, frozen = tmp_path / "eval", tmp_path / "frozen"
    extra = ["--overwrite"] if overwrite else []
    if overwrite:
        out.mkdir()
        (out / "eval_results.json").write_text(EARLIER)
        (out / "generations.jsonl").write_text("{}\n")
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith("eval_results.json"):  # generations.jsonl written, results not
            shutil.copytree(out, frozen)
            raise Killed
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        evaluate(draft, out, prompts, *extra)
    monkeypatch.setattr(os, "replace", real)
    assert not (frozen / "eval_results.json").exists()  # never old results beside new outputs
    assert evaluate(draft, frozen, prompts, *extra)[0] == 0
    got, want = (json.loads((d / "eval_results.json").read_text()) for d in (frozen, reference))
    for key in STABLE:
        got.pop(key), want.pop(key)
    assert got == want
    gens = [(d / "generations.jsonl").read_text() for d in (frozen, reference)]
    assert gens[0] == gens[1]
    assert sorted(p.name for p in frozen.iterdir()) == ["eval_results.json", "generations.jsonl"]
