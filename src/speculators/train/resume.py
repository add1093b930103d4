"""Resuming `speculators train`: which checkpoint a rerun continues from, whether its recorded
settings allow it, and what a rerun with changed settings changes.

Every checkpoint records the run's settings and what its flags pointed at, by content (the
verifier's fingerprint, a digest of the data files, a digest of d2t/t2d). On resume:
- settings that define what is trained (the draft, the data, the batches, the optimiser's
  shape) must be unchanged: a difference is refused, naming the flags;
- `--epochs`, `--lr` and `--max-grad-norm` may change: they apply from the resumed step on
  (lowering --lr after a divergence, or training longer), and a note says what changed;
- everything else (loggers, workers, device, compile, processes, paths to the same files) only
  changes how the run runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from speculators.artifacts.atomic import recover_dirs, remove_stale_temps
from speculators.artifacts.checkpoint import is_complete_checkpoint, read_training_state
from speculators.artifacts.checkpoint_runs import (
    current_run_id,
    epoch_dirs,
    latest_checkpoint,
    start_run,
)
from speculators.artifacts.provenance import VerifierFingerprint
from speculators.config.base import flag
from speculators.config.train import TrainConfig
from speculators.errors import UserInputError

FIXED = (
    "num_layers", "ttt_steps", "ttt_step_loss_decay", "total_seq_len", "seed", "val_fraction",
    "data_format_version", "rows_per_step", "max_steps_per_epoch", "weight_decay", "lr_decay",
    "warmup_steps", "train_lm_head", "packing",
)  # fmt: skip
# What a record written before a setting existed implies for it: the lm_head was trained and
# rows were packed next-fit then.
IMPLIED = {"train_lm_head": True, "packing": "next-fit"}
CHANGEABLE = ("epochs", "lr", "max_grad_norm")
IDENTITY_FLAGS = {
    "verifier": "--verifier-name-or-path",
    "data": "--data-path",
    "vocab": "--d2t-path/--t2d-path",
}


def data_digest(data_path: Path, files: list[Path]) -> str:
    """The data's identity: each sample file's path below --data-path and its size (moving the
    directory keeps it, regenerating or adding samples changes it)."""
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.relative_to(data_path)}\0{path.stat().st_size}\n".encode())
    return h.hexdigest()[:32]


def vocab_digest(d2t: np.ndarray, t2d: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(d2t, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(t2d, dtype=np.bool_).tobytes())
    return h.hexdigest()[:32]


def settings_record(config: TrainConfig, identity: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records of its run, for `check_settings` on resume."""
    values = config.model_dump(mode="json")
    return {
        "settings": {k: values[k] for k in (*FIXED, *CHANGEABLE)},
        "paths": {k: values[k] for k in ("verifier_name_or_path", "data_path", "d2t_path")},
        "identity": identity,
    }


def _identity_differs(name: str, old: Any, new: Any) -> str | None:
    if old is None or new is None:
        return None
    if name == "verifier":
        diffs = VerifierFingerprint.model_validate(old).differences(
            VerifierFingerprint.model_validate(new)
        )
        return f"its {' and '.join(diffs)} differ" if diffs else None
    return "the files differ" if old != new else None


def check_settings(
    checkpoint: Path, state: dict[str, Any], config: TrainConfig, identity: dict[str, Any]
) -> list[str]:
    """Refuse a resume whose settings changed what is trained; returns notes for the changes
    that are allowed."""
    settings, recorded_identity = state.get("settings"), state.get("identity") or {}
    if not isinstance(settings, dict):
        return [
            f"{checkpoint} records no settings (written by an older version): resuming without "
            "comparing them to this command's"
        ]
    now = config.model_dump(mode="json")
    settings = {**IMPLIED, **settings}
    refused = [
        f"{flag(k)} was {settings[k]!r}, now {now[k]!r}"
        for k in FIXED
        if k in settings and settings[k] != now[k]
    ]
    paths = state.get("paths") or {}
    for name, flag_name in IDENTITY_FLAGS.items():
        why = _identity_differs(name, recorded_identity.get(name), identity.get(name))
        if why:
            key = {"verifier": "verifier_name_or_path", "data": "data_path"}.get(name, "d2t_path")
            refused.append(f"{flag_name}: {why} from those of {paths.get(key, 'the checkpoint')}")
    if refused:
        raise UserInputError(
            f"--save-path {config.save_path} holds a run with other settings (newest checkpoint "
            f"{checkpoint}): {'; '.join(refused)}. Rerun with the original values to resume it, "
            "pass --no-resume-from-checkpoint to start over (its checkpoints are replaced once "
            "the new epoch 0 is saved), or use another --save-path."
        )
    step = state.get("global_step")
    return [
        f"{flag(k)} was {settings[k]!r}, now {now[k]!r}: applies from step {step} on"
        for k in CHANGEABLE
        if k in settings and settings[k] != now[k]
    ]


def tidy_save_path(save_path: Path) -> None:
    """Finish or clean what a killed save left (main rank, before anything reads SAVE_PATH)."""
    recover_dirs(save_path)
    remove_stale_temps(save_path)


def choose_start(
    trainer: Any, config: TrainConfig, identity: dict[str, Any]
) -> tuple[Path | None, list[str]]:
    """Resume the current run's newest checkpoint (after `check_settings`), or start a new run.
    Every rank calls this after the main rank's `tidy_save_path`; only the main rank writes."""
    notes: list[str] = []
    save_path = config.save_path
    checkpoint = None
    if not config.no_resume_from_checkpoint:
        checkpoint = latest_checkpoint(save_path, current_run_id(save_path))
    if checkpoint is not None:
        state = read_training_state(checkpoint)
        notes += check_settings(checkpoint, state, config, identity)
        trainer.resume(checkpoint)
        lr = float(trainer.scheduler.get_last_lr()[0])
        if isinstance(state.get("lr"), float) and state["lr"] != lr:
            notes.append(
                f"the learning rate continues at {lr:.3g} (the checkpoint's: {state['lr']:.3g})"
            )
        return checkpoint, notes
    older = [p for p in epoch_dirs(save_path) if is_complete_checkpoint(p)]
    if older:
        names = ", ".join(p.name for p in reversed(older))
        notes.append(
            f"starting over: the checkpoints already in {save_path} (epochs {names}) are of "
            "another run and are deleted once this run saves its first epoch"
        )
    trainer.parallel.barrier()  # every rank has looked before run.json changes
    if trainer.is_main:
        trainer.run_id = start_run(save_path)
    return None, notes
