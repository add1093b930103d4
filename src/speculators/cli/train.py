"""`speculators train`: datagen's hidden states + d2t/t2d -> EAGLE-3 draft checkpoints.

    speculators train --verifier-name-or-path meta-llama/Llama-3.1-8B-Instruct \\
        --data-path ./training_data --d2t-path ./vocab_mapping/d2t.npy \\
        --t2d-path ./vocab_mapping/t2d.npy --save-path ./checkpoints --epochs 10
    # CPU-sized:
    speculators train --verifier-name-or-path ./SmolLM2-135M-Instruct --data-path ./data \\
        --d2t-path ./vocab/d2t.npy --t2d-path ./vocab/t2d.npy --epochs 2 --total-seq-len 1024

The workers always run under torchrun, which this command starts itself (one process per
visible GPU by default, one on CPU): train/launch.py decides how many, writes the resolved config
to a file and runs `python -m torch.distributed.run ... -m speculators train --config FILE`;
each worker runs this command again and trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from speculators.cli.common import (
    build,
    config_option,
    console,
    option,
    user_errors,
    with_config_file,
)
from speculators.config import TrainConfig


class _ConsoleView:
    """A progress bar with the latest step metrics, and a table per finished epoch."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task: Any = None
        self.accuracy = ""

    def note(self, text: str) -> None:
        console.print(f"[bold]note:[/bold] {escape(text)}", highlight=False, soft_wrap=True)

    def start(self, first_epoch: int, epochs: int, rows_per_epoch: list[int]) -> None:
        self.rows, self.epochs = rows_per_epoch, epochs
        if first_epoch:
            console.print(f"resuming after epoch {first_epoch - 1}")
        self.progress.start()
        self._new_task(first_epoch)

    def _new_task(self, epoch: int) -> None:
        if epoch < self.epochs:
            self.task = self.progress.add_task(
                "train", total=self.rows[epoch], epoch=epoch, metrics=""
            )

    def step(self, global_step: int, m: dict[str, float]) -> None:
        if "train/acc_0" in m:  # measured every --metrics-every steps; shown until the next
            self.accuracy = f"acc0 {m['train/acc_0']:.3f} accept {m['train/accept_len']:.2f} "
        text = f"loss {m['train/loss']:.4f} {self.accuracy}{m['train/tokens_per_s']:.0f} tok/s"
        self.progress.update(self.task, advance=1, metrics=text)

    def epoch(self, epoch: int, summary: dict[str, float]) -> None:
        table = Table(title=f"epoch {epoch}")
        table.add_column("split")
        steps = sorted({k.split("_")[-1] for k in summary if "/loss_" in k}, key=int)
        for s in steps:
            table.add_column(f"loss/acc step {s}", justify="right")
        table.add_column("accept len", justify="right")
        for split in ("train", "val"):
            if f"{split}/loss_0" not in summary:
                continue
            cells = [_loss_acc(summary, split, s) for s in steps]
            accept = summary.get(f"{split}/accept_len")
            table.add_row(split, *cells, "-" if accept is None else f"{accept:.2f}")
        self.progress.console.print(table)
        self._new_task(epoch + 1)

    def stop(self) -> None:
        self.progress.stop()


def _loss_acc(summary: dict[str, float], split: str, step: str) -> str:
    acc = summary.get(f"{split}/acc_{step}")  # absent when no step measured it
    return f"{summary[f'{split}/loss_{step}']:.4f} / {'-' if acc is None else f'{acc:.3f}'}"


def train(
    ctx: typer.Context,
    verifier_name_or_path: str = option(TrainConfig, "verifier_name_or_path", default=None),
    data_path: Path = option(TrainConfig, "data_path"),
    save_path: Path = option(TrainConfig, "save_path"),
    epochs: int = option(TrainConfig, "epochs"),
    lr: float = option(TrainConfig, "lr"),
    no_resume_from_checkpoint: bool = option(TrainConfig, "no_resume_from_checkpoint"),
    logger: str = option(TrainConfig, "logger"),
    total_seq_len: int = option(TrainConfig, "total_seq_len"),
    packing: str = option(TrainConfig, "packing"),
    data_format_version: int = option(TrainConfig, "data_format_version"),
    log_dir: Path = option(TrainConfig, "log_dir"),
    run_name: str = option(TrainConfig, "run_name"),
    num_layers: int = option(TrainConfig, "num_layers"),
    d2t_path: Path = option(TrainConfig, "d2t_path"),
    t2d_path: Path = option(TrainConfig, "t2d_path"),
    ttt_steps: int = option(TrainConfig, "ttt_steps"),
    ttt_step_loss_decay: float = option(TrainConfig, "ttt_step_loss_decay"),
    train_lm_head: bool = option(TrainConfig, "train_lm_head"),
    metrics_every: int = option(TrainConfig, "metrics_every"),
    seed: int = option(TrainConfig, "seed"),
    warmup_steps: int = option(TrainConfig, "warmup_steps"),
    lr_decay: str = option(TrainConfig, "lr_decay"),
    weight_decay: float = option(TrainConfig, "weight_decay"),
    max_grad_norm: float = option(TrainConfig, "max_grad_norm"),
    val_fraction: float = option(TrainConfig, "val_fraction"),
    device: str = option(TrainConfig, "device"),
    attention: str = option(TrainConfig, "attention"),
    no_compile: bool = option(TrainConfig, "no_compile"),
    num_workers: int = option(TrainConfig, "num_workers"),
    max_steps_per_epoch: int = option(TrainConfig, "max_steps_per_epoch"),
    rows_per_step: int = option(TrainConfig, "rows_per_step"),
    nproc_per_node: int = option(TrainConfig, "nproc_per_node"),
    nnodes: int = option(TrainConfig, "nnodes"),
    node_rank: int = option(TrainConfig, "node_rank"),
    rdzv_endpoint: str = option(TrainConfig, "rdzv_endpoint"),
    allow_verifier_mismatch: bool = option(TrainConfig, "allow_verifier_mismatch"),
    allow_missing_samples: bool = option(TrainConfig, "allow_missing_samples"),
    config_file: Path = config_option("as written to SAVE_PATH/train_config.json"),
) -> None:
    """Train an EAGLE-3 draft; checkpoints go to SAVE_PATH/{epoch}/ and load in vLLM as is."""
    values = {k: v for k, v in locals().items() if k not in ("ctx", "config_file")}
    values = with_config_file(ctx, values, config_file)
    if values.get("verifier_name_or_path") is None:  # optional only so that --config can give it
        values.pop("verifier_name_or_path", None)
    config = build(TrainConfig, **values)
    from speculators.train.launch import launch

    with user_errors():
        code = launch(config)
    if code is not None:  # the workers ran; each printed its own errors
        raise typer.Exit(code)
    from speculators.train.run import run_train

    view = _ConsoleView()
    with user_errors():
        try:
            result = run_train(config, progress=view)
        finally:
            view.stop()
    if result is None:
        return  # a worker other than the first: rank 0 reports

    table = Table(title="training", show_header=False)
    table.add_row("samples (train / val)", f"{result.num_train_samples} / {result.num_val_samples}")
    table.add_row("verifier layer ids", " ".join(map(str, result.layer_ids)))
    if result.resumed_from is not None:
        table.add_row("resumed from", str(result.resumed_from))
    if result.history:
        last = result.history[-1]
        split = "val" if "val/accept_len" in last else "train"
        if f"{split}/accept_len" in last:
            table.add_row(f"{split} step-0 accuracy", f"{last[f'{split}/acc_0']:.3f}")
            accept = last[f"{split}/accept_len"]
            table.add_row(f"{split} expected acceptance length", f"{accept:.2f}")
        table.add_row(f"{split} loss (TTT step 0)", f"{last[f'{split}/loss_0']:.4f}")
    else:
        table.add_row("epochs run", "none: every epoch was already trained")
    table.add_row("checkpoint", str(result.checkpoint))
    console.print(table)
