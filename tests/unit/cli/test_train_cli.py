"""`speculators train` keeps every flag and default of the reference README's Training section."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from speculators.cli import app
from speculators.config import TrainConfig

# The reference README, "Training" -> "Arguments", written out by hand.
REFERENCE = {
    "verifier_name_or_path": ...,
    "data_path": Path("./data"),
    "save_path": Path("./checkpoints"),
    "epochs": 20,
    "lr": 1e-4,
    "no_resume_from_checkpoint": False,
    "logger": "",
    "total_seq_len": 8192,
    "data_format_version": 1,
    "log_dir": Path("./logs"),
    "run_name": None,
    "num_layers": 1,
    "d2t_path": Path("d2t.npy"),
    "t2d_path": Path("t2d.npy"),
    "ttt_steps": 3,
    "ttt_step_loss_decay": 1.0,
}


def test_reference_flags_and_defaults():
    config = TrainConfig(verifier_name_or_path="m")
    for name, default in REFERENCE.items():
        if default is not ...:
            assert getattr(config, name) == default, name
    help_text = " ".join(CliRunner().invoke(app, ["train", "--help"]).output.split())
    for name in REFERENCE:
        assert "--" + name.replace("_", "-") in help_text


def test_the_verifier_is_required():
    res = CliRunner().invoke(app, ["train"])
    assert res.exit_code == 2 and "--verifier-name-or-path" in res.output
