"""`speculators train` refuses data it cannot tie to the verifier, incomplete data, a resume
that would mix settings, places it cannot write, and a run that diverged; each refusal is exit
2 with one message naming the flag or file and the fix, and leaves every file as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from speculators.artifacts import atomic
from speculators.artifacts.data_config import load_data_config, save_data_config
from speculators.cli import app
from speculators.config import TrainConfig
from speculators.models.fingerprint import verifier_fingerprint
from speculators.train.run import run_train


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def base(tiny_llama, train_data, tiny_vocab, tmp_path_factory):
    """Flags of a 2-epoch run, and a finished run of them (epochs 0 and 1) to resume from."""
    root = tmp_path_factory.mktemp("train-checks")
    flags = {
        "--verifier-name-or-path": str(tiny_llama), "--data-path": str(train_data),
        "--d2t-path": str(tiny_vocab[0]), "--t2d-path": str(tiny_vocab[1]),
        "--epochs": "2", "--total-seq-len": "128", "--num-workers": "0", "--lr": "3e-3",
        "--val-fraction": "0.2",
    }  # fmt: skip
    save = root / "finished"
    code, out = train(flags, save)
    assert code == 0, out
    return flags, save


def train(flags: dict[str, str], save: Path, *extra: str, **overrides: str) -> tuple[int, str]:
    values = flags | {"--save-path": str(save)}
    values |= {"--" + k.replace("_", "-"): v for k, v in overrides.items()}
    res = CliRunner().invoke(app, ["train", *[x for kv in values.items() for x in kv], *extra])
    assert "Traceback" not in res.output, res.output
    return res.exit_code, " ".join(res.output.split())


@pytest.fixture
def save(base, tmp_path) -> Path:
    """A copy of the finished run's checkpoints, compared byte for byte after a refusal."""
    return Path(shutil.copytree(base[1], tmp_path / "save"))


def refused(flags, save, *extra, **overrides) -> str:
    before = snapshot(save)
    code, out = train(flags, save, *extra, **overrides)
    assert code == 2, out
    assert snapshot(save) == before
    return out


def copy_data(train_data: Path, dst: Path) -> Path:
    return Path(shutil.copytree(train_data, dst))


# ---- where the data came from -------------------------------------------------------------


def test_data_of_another_verifier_of_the_same_shape(base, save, train_data, tmp_path):
    from conftest import build_tiny_llama

    flags = base[0]
    other = build_tiny_llama(tmp_path / "reseeded", seed=1)  # same shapes, other weights
    # data_config.json of an older datagen names the model; its fingerprint is computed.
    out = refused(flags, save, "--no-resume-from-checkpoint", verifier_name_or_path=str(other))
    assert str(other) in out and flags["--verifier-name-or-path"] in out
    assert "weights" in out and "--allow-verifier-mismatch" in out
    # A data_config.json with the fingerprint recorded (as datagen writes it), model moved away.
    data = copy_data(train_data, tmp_path / "data")
    config = load_data_config(data)
    config.model.verifier_fingerprint = verifier_fingerprint(flags["--verifier-name-or-path"], "x")
    config.model.target_model_path = "/gone/tiny-llama"
    save_data_config(data, config)
    out = refused(flags, save, verifier_name_or_path=str(other), data_path=str(data))
    assert "/gone/tiny-llama" in out and str(other) in out


def test_allow_verifier_mismatch_trains_with_a_note(base, train_data, tmp_path):
    from conftest import build_tiny_llama

    other = build_tiny_llama(tmp_path / "reseeded", seed=1)
    code, out = train(
        base[0], tmp_path / "s", "--allow-verifier-mismatch", verifier_name_or_path=str(other),
        epochs="1",
    )  # fmt: skip
    assert code == 0 and "training anyway (--allow-verifier-mismatch)" in out


def test_data_whose_model_is_not_at_hand_is_trained_with_a_note(base, train_data, tmp_path):
    data = copy_data(train_data, tmp_path / "data")
    config = load_data_config(data)
    config.model.target_model_path = "/gone/tiny-llama"  # an older datagen, model since moved
    save_data_config(data, config)
    code, out = train(base[0], tmp_path / "s", data_path=str(data), epochs="1")
    assert code == 0 and "records no verifier fingerprint" in out and "not checked" in out


def test_a_half_written_data_dir(base, save, train_data, tmp_path):
    data = copy_data(train_data, tmp_path / "data")
    for i in range(5, 12):
        (data / f"data_{i}.pt").unlink()  # datagen killed after 5 of its 12 samples
    out = refused(base[0], save, data_path=str(data))
    assert "lists 12 samples, 7 are missing (data_5.pt first)" in out
    assert "test" in out  # the datagen command recorded in data_config.json
    assert "--allow-missing-samples" in out
    code, out = train(base[0], tmp_path / "s", "--allow-missing-samples", data_path=str(data))
    assert code == 0 and "training on the 5 present" in out


def test_files_beyond_what_data_config_lists(base, save, train_data, tmp_path):
    data = copy_data(train_data, tmp_path / "data")
    shutil.copy(data / "data_3.pt", data / "data_12.pt")
    out = refused(base[0], save, data_path=str(data))
    assert "data_12.pt" in out and "beyond the 12 samples" in out


def test_token_counts_beside_the_samples_are_never_read_as_one(base, train_data, tmp_path):
    data = copy_data(train_data, tmp_path / "data")
    torch.save({1: 3, 2: 5}, data / "counts.pt")  # --token-freq-path inside --output-dir
    code, out = train(base[0], tmp_path / "s", data_path=str(data), epochs="1")
    assert code == 0, out
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(data / "data_0.pt", loose / "a.pt")
    torch.save({1: 3, 2: 5}, loose / "counts.pt")  # no data_config.json: every .pt is read
    code, out = train(base[0], tmp_path / "s2", data_path=str(loose), epochs="1")
    assert code == 2 and "counts.pt is a token-frequency file" in out


# ---- resuming with other settings ---------------------------------------------------------


def test_resume_refuses_settings_that_change_what_is_trained(base, save, train_data, tmp_path):
    flags = base[0]
    out = refused(flags, save, epochs="3", ttt_steps="2", total_seq_len="96")
    assert "--ttt-steps was 3, now 2" in out and "--total-seq-len was 128, now 96" in out
    assert "--no-resume-from-checkpoint" in out
    data = copy_data(train_data, tmp_path / "data")
    (data / "data_11.pt").unlink()
    config = load_data_config(data)
    config.data.num_samples = 11
    save_data_config(data, config)
    out = refused(flags, save, epochs="3", data_path=str(data))
    assert "--data-path: the files differ" in out and str(train_data) in out


def test_resume_applies_a_new_lr_and_epochs_and_says_so(base, save):
    code, out = train(base[0], save, epochs="3", lr="1e-3")
    assert code == 0, out
    assert "--epochs was 2, now 3" in out and "--lr was 0.003, now 0.001" in out
    state = json.loads((save / "2" / "training_state.json").read_text())
    assert state["settings"]["lr"] == 1e-3 and state["epoch"] == 2
    sched = torch.load(save / "2" / "scheduler.pt")
    assert sched["base_lrs"] == [1e-3]


def test_settings_that_only_change_how_it_runs_resume_silently(base, save):
    code, out = train(base[0], save, "--no-compile", epochs="3", num_workers="1", logger="")
    assert code == 0 and "resuming after epoch 1" in out
    notes = [line for line in out.split("note: ")[1:]]
    assert len(notes) == 2 and "--epochs was 2, now 3" in notes[0]  # and the LR it continues at
    assert "worker" not in out and "compile" not in out


def test_resume_refuses_another_packing(base, save):
    out = refused(base[0], save, epochs="3", packing="next-fit")
    assert "--packing was 'first-fit', now 'next-fit'" in out


def test_checkpoints_from_before_packing_was_recorded_resume_next_fit(base, save):
    """Written before --packing existed, rows were packed next-fit: today's default is refused
    (it would deal the rest of the epoch differently) and --packing next-fit resumes."""
    for epoch in ("0", "1"):
        path = save / epoch / "training_state.json"
        state = json.loads(path.read_text())
        state["settings"].pop("packing")
        path.write_text(json.dumps(state))
    out = refused(base[0], save, epochs="3")
    assert "--packing was 'next-fit', now 'first-fit'" in out
    code, out = train(base[0], save, epochs="3", packing="next-fit")
    assert code == 0 and "resuming after epoch 1" in out, out


def test_old_checkpoints_without_settings_resume_with_a_note(base, save):
    for epoch in ("0", "1"):
        path = save / epoch / "training_state.json"
        state = json.loads(path.read_text())
        for key in ("settings", "paths", "identity", "run_id", "lr"):
            state.pop(key)
        path.write_text(json.dumps(state))
    (save / "run.json").unlink()
    code, out = train(base[0], save, epochs="3")
    assert code == 0 and "records no settings" in out


# ---- damaged checkpoints and output locations ----------------------------------------------


def test_a_newest_checkpoint_without_optimizer_state(base, save):
    (save / "1" / "optimizer.pt").unlink()
    out = refused(base[0], save, epochs="3")
    assert "1 has no optimizer.pt" in out and "--no-resume-from-checkpoint" in out


def test_a_newest_checkpoint_with_a_corrupt_training_state(base, save):
    (save / "1" / "training_state.json").write_text("{not json")
    out = refused(base[0], save, epochs="3")
    assert "1 is damaged: training_state.json" in out and "Delete that directory" in out


def test_a_save_path_it_cannot_write(base, tmp_path):
    (tmp_path / "a-file").write_text("mine")
    code, out = train(base[0], tmp_path / "a-file")
    assert code == 2 and "--save-path" in out and "is a file" in out
    code, out = train(base[0], tmp_path / "s", log_dir=str(tmp_path / "a-file"), logger="jsonl")
    assert code == 2 and "--log-dir" in out
    assert (tmp_path / "a-file").read_text() == "mine" and not (tmp_path / "s").exists()


def test_a_foreign_epoch_dir_in_the_save_path(base, save):
    (save / "5").mkdir()
    (save / "5" / "notes.txt").write_text("mine")
    out = refused(base[0], save, epochs="3")
    assert "5 is not a checkpoint" in out


def test_bad_numbers_are_flag_errors(base, tmp_path):
    for flag, value in (("lr", "inf"), ("lr", "nan"), ("seed", "-1"), ("max_grad_norm", "inf")):
        code, out = train(base[0], tmp_path / "s", **{flag: value})
        assert code == 2 and "--" + flag.replace("_", "-") in out, out
    assert not (tmp_path / "s").exists()


# ---- divergence ----------------------------------------------------------------------------


def test_divergence_stops_after_the_last_good_checkpoint(base, save, tiny_llama):
    out = refused(base[0], save, epochs="3", lr="1e30")
    assert "training diverged in epoch 2" in out and "--lr (now 1e+30)" in out
    assert f"last good checkpoint is {save / '1'}" in out and "--max-grad-norm" in out


def test_divergence_in_the_first_epoch_saves_nothing(base, tmp_path):
    code, out = train(base[0], tmp_path / "s", lr="1e30", epochs="1")
    assert code == 2 and "no epoch had been saved yet" in out
    assert not (tmp_path / "s" / "0").exists()


def test_a_nan_step_is_caught_by_its_loss_without_saving(base, tiny_llama, train_data, tmp_path):
    """Python API: the same UserInputError, and no checkpoint of the broken epoch."""
    from speculators.errors import UserInputError
    from speculators.train import trainer as trainer_mod

    real = trainer_mod.Trainer._forward

    def nan_loss(self, batch, *args):
        loss, metrics = real(self, batch, *args)
        return loss * float("nan"), metrics

    config = TrainConfig(
        verifier_name_or_path=str(tiny_llama), data_path=train_data, d2t_path=base[0]["--d2t-path"],
        t2d_path=base[0]["--t2d-path"], save_path=tmp_path / "s", epochs=1, total_seq_len=128,
        num_workers=0,
    )  # fmt: skip
    trainer_mod.Trainer._forward = nan_loss
    try:
        with pytest.raises(UserInputError, match=r"the loss is nan"):
            run_train(config)
    finally:
        trainer_mod.Trainer._forward = real
    assert not (tmp_path / "s" / "0").exists()


# ---- what it leaves behind -----------------------------------------------------------------


def test_a_full_disk_while_saving_names_the_checkpoint_and_keeps_the_others(
    base, save, monkeypatch
):
    import errno

    from speculators.artifacts import checkpoint

    real = checkpoint.atomic_torch_save

    def save_or_fill_disk(path, obj):
        if Path(path).name != "optimizer.pt":
            return real(path, obj)
        with atomic.atomic_path(path):  # the error comes from inside a write, as a real one does
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_torch_save", save_or_fill_disk)
    before = snapshot(save)
    code, out = train(base[0], save, epochs="3")
    assert code == 2 and f"cannot write {save / '2'}: No space left on device" in out
    assert snapshot(save) == before  # epochs 0 and 1 as they were, no temp left behind


def test_checkpoints_are_readable_by_others_and_temps_are_cleaned(base, save):
    (save / ".tmp-2.abc123").mkdir()
    (save / ".tmp-2.abc123" / "model.safetensors").write_bytes(b"half")
    code, out = train(base[0], save, epochs="3")
    assert code == 0, out
    assert not [p for p in save.iterdir() if p.name.startswith(".")]
    assert (save / "2").stat().st_mode & 0o777 == atomic.DIR_MODE
    for f in (save / "2").iterdir():
        assert f.stat().st_mode & 0o777 == atomic.FILE_MODE, f
    assert os.access(save / "2" / "model.safetensors", os.R_OK)
