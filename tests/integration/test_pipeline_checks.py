"""`speculators pipeline` owns its output root: a root holding outputs it did not make (no
pipeline_state.json) is refused, files intact, unless --overwrite."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import SAMPLE_CONVERSATIONS, write_conversations
from typer.testing import CliRunner

from speculators.cli import app


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_root_it_did_not_make_is_refused_unless_overwrite(tiny_llama, tmp_path):
    data = write_conversations(tmp_path / "convs.jsonl", SAMPLE_CONVERSATIONS)
    root = tmp_path / "run"
    (root / "data").mkdir(parents=True)
    (root / "data" / "data_0.pt").write_bytes(b"someone else's sample")
    (root / "data" / "data_config.json").write_text("{}")
    before = snapshot(root)
    args = ["pipeline", "--target-model-path", str(tiny_llama), "--train-data-path", str(data)]
    args += ["--output-dir", str(root), "--to-stage", "datagen", "--set", "datagen.seq_length=64"]
    res = CliRunner().invoke(app, args)
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "data/" in text and "pipeline_state.json" in text
    assert "--overwrite" in text and "running" not in text
    assert snapshot(root) == before
    res = CliRunner().invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (root / "pipeline_state.json").is_file()
    assert (root / "data" / "data_0.pt").read_bytes() != b"someone else's sample"
    res = CliRunner().invoke(app, args)  # its own root now: no --overwrite needed
    assert res.exit_code == 0 and "datagen: skipped" in " ".join(res.output.split())


def test_an_output_dir_it_cannot_create_names_the_flag(tiny_llama, tmp_path):
    """/proc takes no new directories, whoever asks (root too)."""
    data = write_conversations(tmp_path / "convs.jsonl", SAMPLE_CONVERSATIONS)
    root = Path("/proc/speculators-test-run")
    args = ["pipeline", "--target-model-path", str(tiny_llama), "--train-data-path", str(data)]
    args += ["--output-dir", str(root), "--to-stage", "datagen"]
    res = CliRunner().invoke(app, args)
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and f"--output-dir {root}: cannot create it" in text, text
    assert "Traceback" not in text and not root.exists()
