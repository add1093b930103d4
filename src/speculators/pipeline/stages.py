"""The pipeline's stages, in order, one record each: what it writes and when that is complete,
the local inputs whose identity is part of its fingerprint, and how it runs.

A stage's config (its type, the fields the pipeline sets, how they follow from the output root)
lives in config/pipeline.py, which checks every section before any stage runs. A new stage is
a config there and a record here. Each stage's code is imported when it runs, so asking
whether a stage is complete imports no torch.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from speculators.artifacts.checkpoint_runs import (
    TRAIN_CONFIG_FILE,
    current_run_id,
    latest_checkpoint,
    record_train_config,
)
from speculators.artifacts.data_config import DATA_CONFIG_FILE, load_data_config
from speculators.artifacts.regenerated import load_regeneration_meta
from speculators.artifacts.sample_files import first_missing_index
from speculators.config import pipeline as pipeline_config
from speculators.errors import UserInputError

COMMAND = "speculators pipeline"  # what datagen and regenerate record as their command


class PipelineView(Protocol):
    """What the pipeline tells its caller (the CLI shows it with rich)."""

    def note(self, text: str) -> None: ...

    def datagen_progress(self, done: int, total: int, tokens: int) -> None: ...

    def regenerate_progress(self, done: int, total: int, tokens: int) -> None: ...

    def eval_progress(self, done: int, total: int, stats: Any) -> None: ...


def _nothing(config: Any) -> list[str]:
    return []


def _yes(config: Any) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    name: str
    outputs: Callable[[Any], list[Path]]  # files it writes: complete only when all exist
    run: Callable[[Any, bool, PipelineView], None]  # (config, resume, view)
    finished: Callable[[Any], bool] = _yes  # what else complete means (every sample written)
    inputs: Callable[[Any], list[str]] = _nothing  # local files or hub names read (fingerprint)

    def is_complete(self, config: Any) -> bool:
        return all(p.is_file() for p in self.outputs(config)) and self.finished(config)


def _model_and_data(config: Any) -> list[str]:
    return [config.target_model_path, config.train_data_path]


def _run_regenerate(config: Any, resume: bool, view: PipelineView) -> None:
    from speculators.regenerate import run_regenerate

    run_regenerate(config, view.regenerate_progress, command=COMMAND)


def _regenerated(config: Any) -> bool:
    meta = load_regeneration_meta(config.output_path)
    return meta is not None and meta.progress.complete


def _run_datagen(config: Any, resume: bool, view: PipelineView) -> None:
    from speculators.datagen.run import run_datagen

    run_datagen(config, on_progress=view.datagen_progress, command=COMMAND)


def _every_sample(config: Any) -> bool:
    num = load_data_config(config.output_dir).data.num_samples
    return first_missing_index(config.output_dir, num) == num


def _run_vocab(config: Any, resume: bool, view: PipelineView) -> None:
    from speculators.vocab import run_vocab

    run_vocab(config)


def _run_train(config: Any, resume: bool, view: PipelineView) -> None:
    """`speculators train --config FILE` in a subprocess: its launch of the torchrun workers
    (train/launch.py) is the one a user's command gets."""
    config = config.model_copy(update={"no_resume_from_checkpoint": not resume})
    record_train_config(config.save_path, config.model_dump(mode="json"))
    path = config.save_path / TRAIN_CONFIG_FILE
    code = subprocess.call([sys.executable, "-m", "speculators", "train", "--config", str(path)])
    if code != 0:
        raise UserInputError(
            f"the train stage failed (`speculators train` exited with code {code}; its "
            "message is above). Fix the cause and rerun: finished stages are skipped."
        )


def _last_epoch(config: Any) -> bool:
    last = latest_checkpoint(config.save_path, current_run_id(config.save_path))
    return last == config.save_path / str(config.epochs - 1)


def _run_eval(config: Any, resume: bool, view: PipelineView) -> None:
    from speculators.evaluate import run_eval

    run_eval(config, on_progress=view.eval_progress)


EVAL_RESULTS = "eval_results.json"
STAGES = (
    Stage(
        "regenerate",
        outputs=lambda c: [c.output_path],
        run=_run_regenerate,
        finished=_regenerated,
        inputs=_model_and_data,
    ),
    Stage(
        "datagen",
        outputs=lambda c: [c.output_dir / DATA_CONFIG_FILE, c.token_freq_path],
        run=_run_datagen,
        finished=_every_sample,
        inputs=_model_and_data,
    ),
    Stage(
        "vocab",
        outputs=lambda c: [c.output_path / "d2t.npy", c.output_path / "t2d.npy"],
        run=_run_vocab,
    ),
    Stage("train", outputs=lambda c: [], run=_run_train, finished=_last_epoch),
    Stage("eval", outputs=lambda c: [c.output_dir / EVAL_RESULTS], run=_run_eval),
)
assert tuple(stage.name for stage in STAGES) == pipeline_config.STAGES
