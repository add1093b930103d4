"""`kill -9` during training, checkpoint writes included, with and without
--no-resume-from-checkpoint: the same command again (and, once a run has started over, a plain
rerun too) ends with the same checkpoints as an uninterrupted run; a plain rerun never resumes
the replaced run, and epoch 0 of one run or the other is always on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from killpoint import Freezer, Killed, run_killed
from safetensors.torch import load_file

from speculators.artifacts.checkpoint import is_complete_checkpoint
from speculators.artifacts.checkpoint_runs import current_run_id, latest_checkpoint, run_of
from speculators.config import TrainConfig
from speculators.train.resume import tidy_save_path
from speculators.train.run import run_train

# The old run and the run that replaces it differ only in --lr, which a plain resume accepts:
# resuming the old run by mistake would go unnoticed but for the weights.
OLD = {"epochs": 3, "lr": 3e-3}
NEW = {"epochs": 2, "lr": 1e-3}


@pytest.fixture(scope="module")
def settings(tiny_llama, train_data, tiny_vocab) -> dict:
    return dict(
        verifier_name_or_path=str(tiny_llama), data_path=train_data, d2t_path=tiny_vocab[0],
        t2d_path=tiny_vocab[1], total_seq_len=128, num_workers=0, val_fraction=0.2,
        max_steps_per_epoch=2,
    )  # fmt: skip


def config(settings: dict, save: Path, **kw) -> TrainConfig:
    return TrainConfig(**settings, save_path=save, **kw)


def flags(cfg: TrainConfig) -> list[str]:
    out = ["train"]
    for name, value in cfg.model_dump(exclude_defaults=True).items():
        out += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return out


def weights(save: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(p / "model.safetensors") for p in epochs(save)}


def epochs(save: Path) -> list[Path]:
    return sorted((p for p in save.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[e].keys() == b[e].keys() and all(torch.equal(a[e][k], b[e][k]) for k in a[e]) for e in a
    )


@pytest.fixture(scope="module")
def runs(settings, tmp_path_factory):
    """The old run's checkpoints, and what the new run leaves when nothing kills it."""
    root = tmp_path_factory.mktemp("kill")
    run_train(config(settings, root / "old", **OLD))
    replaced = Path(shutil.copytree(root / "old", root / "replaced"))
    run_train(config(settings, replaced, **NEW, no_resume_from_checkpoint=True))
    assert [p.name for p in epochs(replaced)] == ["0", "1"]
    return root / "old", weights(replaced)


def test_no_resume_killed_at_every_rename_in_save_path(settings, runs, tmp_path, monkeypatch):
    old, expected = runs
    count = tmp_path / "count"
    shutil.copytree(old, count)
    counter = Freezer(count).install(monkeypatch)
    run_train(config(settings, count, **NEW, no_resume_from_checkpoint=True))
    monkeypatch.undo()
    assert counter.count >= 7, counter.ops  # run.json, 2 saves of 2-3 renames, 2 retired
    old_run = run_of(old / "0")
    for k in range(1, counter.count + 1):
        save, frozen = tmp_path / f"run{k}", tmp_path / f"frozen{k}"
        shutil.copytree(old, save)
        Freezer(save, kill_at=k, frozen=frozen).install(monkeypatch)
        with pytest.raises(Killed):
            run_train(config(settings, save, **NEW, no_resume_from_checkpoint=True))
        monkeypatch.undo()
        what = f"killed before {counter.ops[k - 1]}"
        tidy_save_path(frozen)  # what the next run does first
        assert is_complete_checkpoint(frozen / "0"), what  # one run's epoch 0 is always there
        resumable = latest_checkpoint(frozen, current_run_id(frozen))
        if k == 1:  # nothing written yet: the old run as it was; the same command starts over
            assert resumable is not None and run_of(resumable) == old_run
            run_train(config(settings, frozen, **NEW, no_resume_from_checkpoint=True))
        else:  # a plain rerun continues the new run or starts it over, never the old one
            assert resumable is None or run_of(resumable) != old_run, what
            run_train(config(settings, frozen, **NEW))
        assert same(weights(frozen), expected), what


def test_sigkill_while_epoch_0_is_swapped_in_then_a_plain_rerun(settings, runs, tmp_path):
    """The issue's case: killed when the old epoch 0 is moved aside and the new one not yet in
    place, so no `0` is on disk; a plain rerun used to resume the old run's epoch 2."""
    old, expected = runs
    save = Path(shutil.copytree(old, tmp_path / "save"))
    cfg = config(settings, save, **NEW, no_resume_from_checkpoint=True)
    run_killed(flags(cfg), match=r"/\.old-0$", when="after")
    assert not (save / "0").exists()
    result = run_train(config(settings, save, **NEW))
    assert result.resumed_from == save / "0"  # the new run's epoch 0, completed on recovery
    assert same(weights(save), expected)


def test_sigkill_mid_checkpoint_then_the_same_command(settings, tmp_path):
    reference = tmp_path / "reference"
    run_train(config(settings, reference, **OLD))
    save = tmp_path / "save"
    cfg = config(settings, save, **OLD)
    run_killed(flags(cfg), match=r"/\.ready-1$", when="after")  # epoch 1 complete, not in place
    assert [p.name for p in epochs(save)] == ["0"]
    result = run_train(cfg)
    assert result.resumed_from == save / "1"
    assert same(weights(save), weights(reference))
    assert not [p for p in save.iterdir() if p.name.startswith(".")]
