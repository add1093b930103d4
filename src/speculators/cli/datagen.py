"""`speculators datagen`: chat data -> verifier hidden states, loss masks and token counts.

    speculators datagen --target-model-path meta-llama/Llama-3.1-8B-Instruct \\
        --train-data-path sharegpt --output-dir ./training_data --max-samples 5000
    # CPU-sized:
    speculators datagen --target-model-path ./SmolLM2-135M-Instruct --train-data-path sharegpt \\
        --output-dir ./data --max-samples 20 --seq-length 256 --token-freq-path ./data/token_freq.pt
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
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
    command_line,
    config_option,
    console,
    option,
    user_errors,
    with_config_file,
)
from speculators.config import DatagenConfig

if TYPE_CHECKING:
    from speculators.datagen.run import DatagenResult


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]datagen"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("samples"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def datagen(
    ctx: typer.Context,
    target_model_path: str = option(DatagenConfig, "target_model_path", default=None),
    train_data_path: str = option(DatagenConfig, "train_data_path", default=None),
    output_dir: Path = option(DatagenConfig, "output_dir"),
    max_samples: int = option(DatagenConfig, "max_samples"),
    seq_length: int = option(DatagenConfig, "seq_length"),
    cache_dir: Path = option(DatagenConfig, "cache_dir"),
    layer_ids: list[int] = option(DatagenConfig, "layer_ids"),
    tensor_parallel_size: int = option(DatagenConfig, "tensor_parallel_size"),
    batch_size: int = option(DatagenConfig, "batch_size"),
    seed: int = option(DatagenConfig, "seed"),
    token_freq_path: Path = option(DatagenConfig, "token_freq_path"),
    backend: str = option(DatagenConfig, "backend"),
    device: str = option(DatagenConfig, "device"),
    dtype: str = option(DatagenConfig, "dtype"),
    no_compile: bool = option(DatagenConfig, "no_compile"),
    hidden_states_dtype: str = option(DatagenConfig, "hidden_states_dtype"),
    gpu_memory_utilization: float = option(DatagenConfig, "gpu_memory_utilization"),
    nproc_per_node: int = option(DatagenConfig, "nproc_per_node"),
    nnodes: int = option(DatagenConfig, "nnodes"),
    node_rank: int = option(DatagenConfig, "node_rank"),
    rdzv_endpoint: str = option(DatagenConfig, "rdzv_endpoint"),
    overwrite: bool = option(DatagenConfig, "overwrite"),
    config_file: Path = config_option("what `--nproc-per-node` hands its processes"),
) -> None:
    """Run the verifier over chat data; store hidden states, loss masks and token counts."""
    values = {k: v for k, v in locals().items() if k not in ("ctx", "config_file")}
    values = with_config_file(ctx, values, config_file)
    values["layer_ids"] = values.get("layer_ids") or None
    for required in ("target_model_path", "train_data_path"):  # optional only for --config
        if values.get(required) is None:
            values.pop(required, None)
    config = build(DatagenConfig, **values)
    from speculators.datagen.launch import launch

    with user_errors():
        code = launch(config, command_line())
    if code is not None:  # the workers ran; each printed its own errors
        raise typer.Exit(code)
    from speculators.datagen.run import run_datagen

    progress = _progress()
    task = progress.add_task("datagen", total=None, rate="")
    started: list[float] = []

    def on_progress(done: int, total: int, tokens: int) -> None:
        # The bar appears once the verifier runs, not during checks and tokenization.
        if not started:
            started.append(time.perf_counter())
            progress.start()
        elapsed = time.perf_counter() - started[0]
        rate = f"{tokens / elapsed:,.0f} tok/s" if elapsed > 0 and tokens else ""
        progress.update(task, completed=done, total=total, rate=rate)

    try:
        with user_errors():
            result = run_datagen(config, on_progress=on_progress, command=command_line())
    finally:
        progress.stop()
    if result is not None:  # None: a process other than the first (that one reports)
        _summary(result)


def _summary(result: DatagenResult) -> None:
    table = Table(title="datagen", show_header=False)
    table.add_row("samples", f"{result.num_samples:,} ({result.num_generated:,} generated now)")
    table.add_row("tokens", f"{result.num_tokens:,}")
    table.add_row("supervised tokens", f"{result.num_supervised_tokens:,} (loss mask 1)")
    skipped = [
        (result.num_skipped_no_assistant, "without an assistant turn"),
        (result.num_skipped_truncated, "without assistant tokens within --seq-length"),
        (result.num_skipped_template_error, "rejected by the chat template"),
    ]
    table.add_row(
        "skipped conversations", ", ".join(f"{n:,} {why}" for n, why in skipped if n) or "none"
    )
    table.add_row("layer ids", f"{result.layer_ids} ({result.backend} backend)")
    table.add_row("bytes written", f"{result.bytes_written / 2**20:,.1f} MiB")
    table.add_row("throughput", f"{result.tokens_per_second:,.0f} tokens/s")
    table.add_row("time", f"{result.seconds:,.1f} s")
    table.add_row("data config", str(result.data_config_path))
    table.add_row("token frequencies", str(result.token_freq_path))
    for note in result.notes:
        table.add_row("note", note)
    console.print(table)
