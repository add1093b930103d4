"""The pipeline's run: each stage of pipeline/stages.py in order, under one output root.

A stage is skipped when its outputs are complete and its fingerprint (its resolved config, the
fingerprints of the stages before it and the identity of its input files) matches the one stored
in `pipeline_state.json` when it last finished; otherwise it runs, and so does every later stage.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speculators.artifacts.atomic import atomic_write_json
from speculators.artifacts.output_paths import check_output_dir
from speculators.config.pipeline import PipelineConfig
from speculators.errors import UserInputError
from speculators.pipeline.stages import EVAL_RESULTS, STAGES, PipelineView, Stage

STATE_FILE = "pipeline_state.json"
# Settings that change how (fast) a stage runs, not what it writes.
NOT_FINGERPRINTED = {"batch_size", "num_workers", "device", "logger", "run_name", "overwrite"}
NOT_FINGERPRINTED |= {"no_resume_from_checkpoint", "gpu_memory_utilization"}
NOT_FINGERPRINTED |= {"nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint"}
OUTPUT_DIRS = ("data", "vocab", "checkpoints", "logs", "eval")


class PrintView:
    """The plain view: stage notes on stdout, no progress bars."""

    def note(self, text: str) -> None:
        print(text)

    def datagen_progress(self, done: int, total: int, tokens: int) -> None:
        pass

    def regenerate_progress(self, done: int, total: int, tokens: int) -> None:
        pass

    def eval_progress(self, done: int, total: int, stats: Any) -> None:
        pass


@dataclass
class PipelineResult:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    eval_metrics: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _stamp(path_or_name: str) -> Any:
    """Identity of a local input (size and mtime), or the name itself for a hub name."""
    path = Path(path_or_name)
    files = [path] if path.is_file() else sorted(path.glob("*.json")) if path.is_dir() else []
    return [path_or_name, [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]


def fingerprint(stage: Stage, config: Any, upstream: list[str]) -> str:
    # Only values that differ from their defaults: a field added to a stage's config in a later
    # version (with a default) does not invalidate finished stages.
    dumped = config.model_dump(mode="json", exclude_defaults=True)
    values = {k: v for k, v in dumped.items() if k not in NOT_FINGERPRINTED}
    inputs = [_stamp(name) for name in stage.inputs(config)]
    blob = json.dumps([stage.name, values, upstream, inputs], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) and isinstance(state.get("stages"), dict) else {}
    except (OSError, ValueError):
        return {}


def check_ownership(config: PipelineConfig) -> None:
    """The pipeline replaces the outputs under its root freely, so it refuses a root it did not
    make (files in its output dirs but no pipeline_state.json) unless --overwrite."""
    root = config.output_dir
    check_output_dir(root, "--output-dir")
    if (root / STATE_FILE).exists() or config.overwrite:
        return
    used = [
        f"{sub}/" for sub in OUTPUT_DIRS if (root / sub).is_dir() and any((root / sub).iterdir())
    ]
    if used:
        raise UserInputError(
            f"--output-dir {root} already holds {', '.join(used)} but no {STATE_FILE}: files the "
            "pipeline did not make, which its stages would replace. Pass another --output-dir, "
            "or --overwrite to let the pipeline replace them."
        )


def run_pipeline(config: PipelineConfig, view: PipelineView | None = None) -> PipelineResult:
    """Run (or skip) each stage from the first to `config.to_stage`."""
    view = view or PrintView()
    configs = config.stage_configs()
    check_ownership(config)
    root = config.output_dir
    root.mkdir(parents=True, exist_ok=True)
    state_path = root / STATE_FILE
    state = _load_state(state_path)
    if not state:
        state = {"version": 1, "stages": {}}
        atomic_write_json(state_path, state)  # the root is the pipeline's from now on
    for sub in OUTPUT_DIRS:
        (root / sub).mkdir(exist_ok=True)
    result = PipelineResult()
    upstream: list[str] = []
    forced = False
    names = [stage.name for stage in STAGES]
    first = names.index(config.from_stage) if config.from_stage else 0
    for i, stage in enumerate(STAGES[: names.index(config.to_stage) + 1]):
        stage_config = configs.get(stage.name)
        if stage_config is None:  # an optional stage that is off (regenerate)
            continue
        fp = fingerprint(stage, stage_config, upstream)
        upstream.append(fp)
        forced = forced or stage.name == config.from_stage  # re-runs, even if complete
        same = state["stages"].get(stage.name, {}).get("fingerprint") == fp
        if i < first or (not forced and same and stage.is_complete(stage_config)):
            why = "before --from-stage" if i < first else "outputs complete, inputs unchanged"
            view.note(f"{stage.name}: skipped ({why})")
            result.skipped.append(stage.name)
            continue
        view.note(f"{stage.name}: running")
        started = time.perf_counter()
        # Resume a half-done training run only when nothing it depends on changed.
        stage.run(stage_config, same and not forced, view)
        seconds = result.seconds[stage.name] = time.perf_counter() - started
        result.ran.append(stage.name)
        forced = True  # new outputs: every later stage runs again
        state["stages"][stage.name] = {"fingerprint": fp, "seconds": round(seconds, 1)}
        for later in names[i + 1 :]:
            state["stages"].pop(later, None)
        atomic_write_json(state_path, state)
    if config.to_stage == "eval":  # run or complete: its results are on disk
        metrics = json.loads((configs["eval"].output_dir / EVAL_RESULTS).read_text())
        metrics["notes"] = [*metrics["notes"], heldout_note(configs, metrics)]
        result.eval_metrics = metrics
    return result


def heldout_note(configs: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Whether eval's prompts are among the conversations training read: the same file and
    seed mean the same permutation, training took its first `max_samples` records."""
    import numpy as np

    reader, prompts = configs.get("regenerate") or configs["datagen"], configs["eval"]
    if "prompt_records" not in metrics:
        return "eval_results.json names no prompt records (an older version wrote it)"
    used = {r["index"] for r in metrics["prompt_records"]}
    if prompts.data_path != reader.train_data_path:
        return f"eval prompts: {len(used)} from {prompts.data_path}, not the training data"
    order = np.random.default_rng(reader.seed).permutation(metrics["num_records"])
    trained = set(order[: reader.max_samples].tolist())
    if used & trained:
        return (
            f"NOT held out: {len(used & trained)} of the {len(used)} eval prompts are among the "
            f"{len(trained)} training conversations; lower datagen.max_samples or set "
            "eval.data_path to other prompts"
        )
    return (
        f"held out: none of the {len(used)} eval prompts is among the {len(trained)} "
        f"conversations training read from {reader.train_data_path}"
    )
