"""`speculators train` on the tiny verifier: learning, exact resume, and every bad input of issue 4
(exit 2, a message naming the flag or file, and nothing already written destroyed)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from speculators.artifacts.samples import save_sample
from speculators.cli import app
from speculators.config import TrainConfig
from speculators.train import trainer as trainer_mod
from speculators.train.run import run_train


def config(tiny_llama, train_data, tiny_vocab, save_path, **kw) -> TrainConfig:
    values = dict(
        verifier_name_or_path=str(tiny_llama),
        data_path=train_data,
        d2t_path=tiny_vocab[0],
        t2d_path=tiny_vocab[1],
        save_path=save_path,
        epochs=3,
        lr=3e-3,
        total_seq_len=128,
        num_workers=0,
        val_fraction=0.2,
    )
    return TrainConfig(**(values | kw))


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama, train_data, tiny_vocab, tmp_path_factory):
    save = tmp_path_factory.mktemp("run-a") / "checkpoints"
    return run_train(config(tiny_llama, train_data, tiny_vocab, save)), save


def test_training_lowers_the_loss_and_saves_every_epoch(uninterrupted):
    result, save = uninterrupted
    losses = [h["val/loss_0"] for h in result.history]
    assert losses[-1] < 0.9 * losses[0], losses
    train_losses = [h["train/loss_0"] for h in result.history]
    assert train_losses[-1] < train_losses[0]
    assert sorted(p.name for p in save.iterdir() if p.is_dir()) == ["0", "1", "2"]
    assert result.checkpoint == save / "2"
    for name in ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt"):
        assert (save / "2" / name).is_file()


def test_kill_and_resume_gives_the_same_weights_as_one_run(
    uninterrupted, tiny_llama, train_data, tiny_vocab, tmp_path, monkeypatch
):
    _, save_a = uninterrupted
    save_b = tmp_path / "checkpoints"
    cfg = config(tiny_llama, train_data, tiny_vocab, save_b)
    real_step = trainer_mod.Trainer.queue_step
    steps_per_epoch = 3  # 9 train samples of 20-40 tokens packed into rows of 128

    def dies_in_epoch_2(self, batch):
        if self.epoch == 2:
            raise KeyboardInterrupt  # the process is killed mid-epoch
        return real_step(self, batch)

    monkeypatch.setattr(trainer_mod.Trainer, "queue_step", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg)
    assert sorted(p.name for p in save_b.iterdir() if p.is_dir()) == ["0", "1"]
    (save_b / ".tmp-2.half-written").mkdir()  # a save that was cut off is ignored
    monkeypatch.setattr(trainer_mod.Trainer, "queue_step", real_step)
    resumed = run_train(cfg)
    assert resumed.resumed_from == save_b / "1"
    assert len(resumed.history) == 1
    a, b = (
        load_file(save_a / "2" / "model.safetensors"),
        load_file(save_b / "2" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    master = lambda p: torch.load(p / "2" / "trainer_state.pt")["master_weights"]  # noqa: E731
    for name, tensor in master(save_a).items():
        assert torch.equal(tensor, master(save_b)[name]), name
    assert steps_per_epoch * 3 == torch.load(save_b / "2" / "scheduler.pt")["last_epoch"]


def test_no_resume_starts_over(uninterrupted, tiny_llama, train_data, tiny_vocab, tmp_path):
    _, save_a = uninterrupted
    save = tmp_path / "ck"
    shutil.copytree(save_a, save)
    result = run_train(
        config(tiny_llama, train_data, tiny_vocab, save, epochs=1, no_resume_from_checkpoint=True)
    )
    assert result.resumed_from is None and len(result.history) == 1
    # the old run's later epochs are gone, so a plain rerun cannot resume from them
    assert sorted(p.name for p in save.iterdir() if p.is_dir()) == ["0"]
    assert result.checkpoint == save / "0"


# ---- bad inputs --------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def cli(uninterrupted, tiny_llama, train_data, tiny_vocab, tmp_path):
    """Run `speculators train` with overrides; checks exit 2 and that --save-path (holding a
    finished epoch 0) is untouched. Returns the error output."""
    save = tmp_path / "save"
    shutil.copytree(uninterrupted[1] / "0", save / "0")
    before = snapshot(save)

    def run(*extra: str, **overrides: str) -> str:
        flags = {
            "--verifier-name-or-path": str(tiny_llama),
            "--data-path": str(train_data),
            "--d2t-path": str(tiny_vocab[0]),
            "--t2d-path": str(tiny_vocab[1]),
            "--save-path": str(save),
            "--epochs": "2",
            "--total-seq-len": "128",
            "--num-workers": "0",
            "--val-fraction": "0.2",  # as in the run epoch 0 comes from, so it resumes
        } | {"--" + k.replace("_", "-"): v for k, v in overrides.items()}
        args = ["train", *[x for kv in flags.items() for x in kv], *extra]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        assert snapshot(save) == before
        return " ".join(res.output.split())

    return run


def test_no_sample_files(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    out = cli(data_path=str(tmp_path / "empty"))
    assert "--data-path" in out and "no .pt sample files" in out


def test_data_of_another_verifier(cli, tmp_path):
    from conftest import build_tiny_llama

    wider = build_tiny_llama(tmp_path / "wide", hidden_size=64)
    out = cli(verifier_name_or_path=str(wider))
    assert "hidden size 32" in out and "64" in out
    shallower = build_tiny_llama(tmp_path / "shallow", num_layers=4)
    out = cli(verifier_name_or_path=str(shallower))
    assert "4 decoder layers" in out and "data_config.json" in out


def test_files_and_data_config_disagree_on_layer_count(cli, train_data, tmp_path, tiny_llama):
    from conftest import write_data_config

    data = copy_data(train_data, tmp_path / "data")
    write_data_config(data, tiny_llama, 32, [0, 1, 2, 3, 5], 12)
    out = cli(data_path=str(data))
    assert "3 auxiliary layers" in out and "[0, 1, 2, 3]" in out


def test_missing_vocab_files_say_how_to_make_them(cli, tmp_path):
    out = cli(d2t_path=str(tmp_path / "nope" / "d2t.npy"))
    assert "--d2t-path" in out and "speculators vocab" in out


def test_d2t_and_t2d_disagree(cli, tmp_path, tiny_vocab):
    np.save(tmp_path / "d2t.npy", np.zeros(10, dtype=np.int64))
    out = cli(d2t_path=str(tmp_path / "d2t.npy"))
    assert "d2t" in out and "t2d" in out and "matching pair" in out


def test_vocab_of_another_verifier(cli, tmp_path):
    from conftest import write_vocab_files

    d2t, t2d = write_vocab_files(tmp_path, 1000, 100)
    out = cli(d2t_path=str(d2t), t2d_path=str(t2d))
    assert "1000" in out and "speculators vocab" in out


def copy_data(train_data: Path, dst: Path) -> Path:
    shutil.copytree(train_data, dst)
    return dst


def test_corrupt_sample_file_is_named(cli, train_data, tmp_path):
    data = copy_data(train_data, tmp_path / "data")
    (data / "data_3.pt").write_bytes(b"not a torch file")
    out = cli(data_path=str(data))
    assert "data_3.pt" in out and "corrupt" in out


def test_nan_in_a_sample(cli, train_data, tmp_path):
    data = copy_data(train_data, tmp_path / "data")
    record = torch.load(data / "data_4.pt")
    record["hidden_states"][0][3, 1] = float("nan")
    save_sample(
        data / "data_4.pt", record["input_ids"], record["hidden_states"], record["loss_mask"]
    )
    out = cli(data_path=str(data))
    assert "data_4.pt" in out and "NaN" in out


def test_wrong_data_format_version(cli):
    out = cli(data_format_version="0")
    assert "--data-format-version" in out and "version 1" in out


def test_ttt_steps_below_one(cli):
    out = cli(ttt_steps="0")
    assert "--ttt-steps" in out


def test_unknown_and_missing_loggers(cli, monkeypatch):
    assert "--logger" in cli(logger="tensorboard,bogus")
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)
    out = cli(logger="wandb")
    assert "pip install 'speculators[loggers]'" in out
