"""Metric loggers (tensorboard, wandb, trackio, jsonl) behind one small interface."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from speculators.errors import UserInputError, write_failure

_INSTALL = "pip install 'speculators[loggers]'"


def _missing(name: str, module: str) -> UserInputError:
    return UserInputError(
        f"--logger {name} needs the `{module}` package, which is not installed. Install the "
        f"logger extras with `{_INSTALL}` (or just `pip install {module}`), or drop it from "
        "--logger."
    )


class MetricLoggers:
    """Fan metrics out to every configured logger. Construct before training starts, so that a
    missing package fails before any work is done."""

    def __init__(
        self, names: list[str], log_dir: Path, run_name: str | None, config: dict[str, Any]
    ) -> None:
        self._sinks: list[tuple[str, Any]] = []
        for name in names:
            self._sinks.append((name, self._open(name, log_dir, run_name, config)))

    @staticmethod
    def _open(name: str, log_dir: Path, run_name: str | None, config: dict[str, Any]) -> Any:
        if name == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise _missing(name, "tensorboard") from None
            return SummaryWriter(log_dir=str(log_dir / (run_name or "speculators")))
        if name == "wandb":
            try:
                import wandb
            except ImportError:
                raise _missing(name, "wandb") from None
            log_dir.mkdir(parents=True, exist_ok=True)
            return wandb.init(project="speculators", name=run_name, dir=str(log_dir), config=config)
        if name == "trackio":
            try:
                import trackio
            except ImportError:
                raise _missing(name, "trackio") from None
            trackio.init(project="speculators", name=run_name, config=config)
            return trackio
        if name == "jsonl":  # one JSON object per logged step, needs no package
            path = log_dir / (run_name or "speculators") / "metrics.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.open("a")
        raise AssertionError(f"unknown logger {name}")  # TrainConfig rejects these

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, sink in self._sinks:
            if name == "tensorboard":
                for key, value in metrics.items():
                    sink.add_scalar(key, value, step)
            elif name == "jsonl":
                try:
                    sink.write(json.dumps({"step": step, **metrics}) + "\n")
                    sink.flush()
                except OSError as e:
                    raise write_failure(sink.name, e) from e
            else:
                sink.log(metrics, step=step)

    def close(self) -> None:
        for name, sink in self._sinks:
            if name in ("tensorboard", "jsonl"):
                sink.close()
            else:
                sink.finish()
