"""Which checkpoints in SAVE_PATH a plain rerun may resume from: those of the current run.

`SAVE_PATH/run.json` names the current run; every checkpoint's training_state.json names the
run that wrote it. A run that starts over (--no-resume-from-checkpoint, or nothing to resume)
writes a new run.json before its first step, so from then on the old run's epochs are never
resumed from, whatever moment a kill comes at, yet stay on disk until the new run has saved
its epoch 0 (which replaces the old epoch 0 in one swap); the old run's epochs are deleted
then. Without run.json (checkpoints of older versions, or copied in by hand) the run of the
newest checkpoint is the current one; checkpoints of older versions belong to run "legacy".
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from speculators.artifacts.atomic import atomic_write_json, retire_dir
from speculators.artifacts.checkpoint import is_complete_checkpoint, read_training_state
from speculators.errors import UserInputError

RUN_FILE = "run.json"
LEGACY_RUN = "legacy"
# The resolved settings of the run whose newest checkpoint SAVE_PATH holds, written with each
# checkpoint: `speculators train --config SAVE_PATH/train_config.json` runs them again.
TRAIN_CONFIG_FILE = "train_config.json"


def current_run_id(save_path: Path) -> str | None:
    """The run a plain rerun continues; None when there is none."""
    path = save_path / RUN_FILE
    if not path.exists():
        newest = next((p for p in epoch_dirs(save_path) if is_complete_checkpoint(p)), None)
        return run_of(newest) if newest is not None else None
    try:
        run_id = json.loads(path.read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        run_id = None
    if not isinstance(run_id, str):
        raise UserInputError(
            f"{path} is damaged (it names the training run a rerun resumes). Delete it to "
            "resume from the newest checkpoint, or pass --no-resume-from-checkpoint."
        )
    return run_id


def start_run(save_path: Path) -> str:
    """Make a new run current; returns its id. Written before the run's first checkpoint."""
    run_id = uuid.uuid4().hex[:12]
    started = datetime.now(timezone.utc).isoformat()
    atomic_write_json(save_path / RUN_FILE, {"run_id": run_id, "started_at": started})
    return run_id


def epoch_dirs(save_path: Path) -> list[Path]:
    """`SAVE_PATH/{epoch}` entries, newest first."""
    if not save_path.is_dir():
        return []
    return sorted((p for p in save_path.iterdir() if p.name.isdigit()), key=lambda p: -int(p.name))


def run_of(checkpoint_dir: Path) -> str:
    return str(read_training_state(checkpoint_dir).get("run_id", LEGACY_RUN))


def latest_checkpoint(save_path: Path, run_id: str | None) -> Path | None:
    """The newest complete checkpoint of run `run_id`, or None."""
    if run_id is None:
        return None
    for path in epoch_dirs(save_path):
        if is_complete_checkpoint(path) and run_of(path) == run_id:
            return path
    return None


def other_runs_epochs(save_path: Path, run_id: str) -> list[Path]:
    """Complete checkpoints of runs other than `run_id` (damaged ones are left alone)."""
    found = []
    for path in epoch_dirs(save_path):
        try:
            if is_complete_checkpoint(path) and run_of(path) != run_id:
                found.append(path)
        except UserInputError:
            continue
    return found


def retire_other_runs(save_path: Path, run_id: str) -> list[Path]:
    """Delete the checkpoints of other runs (once this run has saved an epoch)."""
    old = other_runs_epochs(save_path, run_id)
    for path in old:
        retire_dir(path)
    return old


def record_train_config(save_path: Path, values: dict[str, Any]) -> None:
    atomic_write_json(save_path / TRAIN_CONFIG_FILE, values)
