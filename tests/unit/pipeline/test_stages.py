"""The pipeline's stage records: the train stage hands `speculators train` its resolved config
as a file (never flags rebuilt from values), and completeness is asked without torch."""

from __future__ import annotations

import json
import subprocess
import sys

from speculators.config import PipelineConfig, TrainConfig
from speculators.pipeline import STAGES, PrintView
from speculators.pipeline import stages as stages_mod


def test_train_stage_runs_the_train_command_on_its_config_file(monkeypatch, tmp_path):
    calls: list[list[str]] = []
    monkeypatch.setattr(stages_mod.subprocess, "call", lambda argv: calls.append(argv) or 0)
    pipeline = PipelineConfig(
        output_dir=tmp_path / "run dir", target_model_path="m", train_data_path="d.jsonl",
        train={"epochs": 2, "run_name": "", "logger": "jsonl,tensorboard"},
    )  # fmt: skip
    config = pipeline.stage_configs()["train"]
    train = next(stage for stage in STAGES if stage.name == "train")
    train.run(config, False, PrintView())
    path = config.save_path / "train_config.json"
    assert calls == [[sys.executable, "-m", "speculators", "train", "--config", str(path)]]
    given = TrainConfig(**json.loads(path.read_text()))
    assert given == config.model_copy(update={"no_resume_from_checkpoint": True})


def test_asking_whether_stages_are_complete_imports_no_torch():
    code = (
        "import sys; from speculators.pipeline import STAGES; "
        "from speculators.config import PipelineConfig; "
        "c = PipelineConfig(target_model_path='m', train_data_path='d.jsonl').stage_configs(); "
        "print([s.is_complete(c[s.name]) for s in STAGES if s.name in c], 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[False,", "False,", "False,", "False]", "False"]
