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


def test_a_config_file_with_a_key_that_is_no_setting_names_it(tmp_path):
    """Keys are the flags' own names; a misspelt one is refused by name, for train and datagen
    alike (one reader of --config files), before anything starts."""
    for command, known in (("train", "verifier_name_or_path"), ("datagen", "target_model_path")):
        path = tmp_path / f"{command}.json"
        path.write_text(f'{{"{known}": "m", "total-seq-len": 4096}}')
        res = CliRunner().invoke(app, [command, "--config", str(path)])
        text = " ".join(res.output.split())
        assert res.exit_code == 2, res.output
        assert f"--config {path}: unknown setting 'total-seq-len'" in text
        assert f"{known} for --{known.replace('_', '-')}" in text


def test_an_unknown_packing_is_refused_by_flag():
    res = CliRunner().invoke(app, ["train", "--verifier-name-or-path", "m", "--packing", "best"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "--packing" in text and "'first-fit' or 'next-fit'" in text
