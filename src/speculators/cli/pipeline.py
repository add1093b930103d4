"""`speculators pipeline`: [regenerate ->] datagen -> vocab -> train -> eval from one config,
resumable.

    speculators pipeline                                   # built-in demo (SmolLM2, CPU, ~15 min)
    speculators pipeline --config pipeline.yaml            # YAML or TOML, a section per stage
    speculators pipeline --target-model-path ./SmolLM2-135M-Instruct --train-data-path sharegpt \\
        --output-dir ./run --set datagen.max_samples=200 --set train.epochs=2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from speculators.cli.common import build, console, fail, option, user_errors
from speculators.cli.eval import results_table
from speculators.config.pipeline import (
    STAGES,
    PipelineConfig,
    apply_overrides,
    load_config_file,
)


class _RichView:
    """One-line stage notes and progress bars for datagen and eval (train prints its own)."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task: Any = None

    def note(self, text: str) -> None:
        self._stop()
        stage, _, rest = text.partition(": ")
        console.print(f"[bold]{stage}[/bold]: {rest}")

    def _bar(self, label: str, fields: str) -> None:
        if self.progress is None:
            self.progress = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(fields),
                TimeElapsedColumn(),
                console=console,
            )
            self.progress.start()
            self.task = self.progress.add_task(label, total=None, info="")

    def datagen_progress(self, done: int, total: int, tokens: int) -> None:
        self._bar("datagen", "samples")
        assert self.progress is not None
        self.progress.update(self.task, completed=done, total=total)

    def regenerate_progress(self, done: int, total: int, tokens: int) -> None:
        self._bar("regenerate", "conversations")
        assert self.progress is not None
        self.progress.update(self.task, completed=done, total=total)

    def eval_progress(self, done: int, total: int, stats: Any) -> None:
        self._bar("eval", "prompts  {task.fields[info]}")
        assert self.progress is not None
        info = f"acceptance length {stats.mean_acceptance_length:.2f}"
        self.progress.update(self.task, completed=done, total=total, info=info)

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    close = _stop


def pipeline(
    config: Path = typer.Option(
        None, "--config", help="YAML or TOML file: top-level keys and a section per stage."
    ),
    output_dir: Path = option(PipelineConfig, "output_dir", default=None),
    target_model_path: str = option(PipelineConfig, "target_model_path"),
    train_data_path: str = option(PipelineConfig, "train_data_path"),
    from_stage: str = option(PipelineConfig, "from_stage"),
    to_stage: str = option(PipelineConfig, "to_stage", default=None),
    overwrite: bool = option(PipelineConfig, "overwrite"),
    set_: list[str] = typer.Option(
        None,
        "--set",
        help="Override one stage flag: STAGE.FIELD=VALUE, e.g. --set train.epochs=3 (repeatable).",
    ),
) -> None:
    """Run [regenerate ->] datagen -> vocab -> train -> eval; finished stages with unchanged
    inputs are skipped. With no model given it runs the built-in demo (SmolLM2-135M-Instruct on
    ShareGPT rows)."""
    from speculators.demo import DEMO_ROOT, demo_values
    from speculators.pipeline import run_pipeline

    with user_errors():
        try:
            values: dict[str, Any] = load_config_file(config) if config else {}
            flags = {
                "output_dir": output_dir,
                "target_model_path": target_model_path,
                "train_data_path": train_data_path,
                "from_stage": from_stage,
                "to_stage": to_stage,
                "overwrite": overwrite or None,
            }
            values |= {k: v for k, v in flags.items() if v is not None}
            values = apply_overrides(values, set_ or [])
        except ValueError as e:
            fail(str(e))
        if not values.get("target_model_path") and not values.get("datagen", {}).get(
            "target_model_path"
        ):
            root = Path(values.get("output_dir") or DEMO_ROOT)
            console.print(f"no model given: running the built-in demo into {root}")
            demo = demo_values(root)
            for stage in STAGES:
                if stage in values:
                    demo[stage] = {**(demo.get(stage) or {}), **(values.pop(stage) or {})}
            values = demo | values
        pipeline_config = build(PipelineConfig, **values)
        view = _RichView()
        try:
            result = run_pipeline(pipeline_config, view)
        finally:
            view.close()
    if result.eval_metrics is not None:
        console.print(results_table(result.eval_metrics))
    ran = ", ".join(result.ran) or "nothing (every stage was up to date)"
    console.print(f"ran: {ran}; outputs in {pipeline_config.output_dir}")
