"""`speculators regenerate`: every assistant turn of a chat data set rewritten by the verifier.

    speculators regenerate --target-model-path meta-llama/Llama-3.1-8B-Instruct \\
        --train-data-path sharegpt --output-path ./regenerated.jsonl --max-samples 5000 \\
        --backend vllm --batch-size 256
    # CPU-sized (SmolLM2-135M-Instruct, as the demo converts it):
    speculators regenerate --target-model-path ./speculators-demo/model/SmolLM2-135M-Instruct \\
        --train-data-path sharegpt --output-path ./regenerated.jsonl --max-samples 16 \\
        --seq-length 320 --max-new-tokens 256
    speculators datagen --train-data-path ./regenerated.jsonl ...   # then as usual
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from speculators.cli.common import build, command_line, console, option, user_errors
from speculators.config.regenerate import RegenerateConfig

if TYPE_CHECKING:
    from speculators.regenerate import RegenerateResult


def regenerate(
    target_model_path: str = option(RegenerateConfig, "target_model_path"),
    train_data_path: str = option(RegenerateConfig, "train_data_path"),
    output_path: Path = option(RegenerateConfig, "output_path"),
    max_samples: int = option(RegenerateConfig, "max_samples"),
    seed: int = option(RegenerateConfig, "seed"),
    max_new_tokens: int = option(RegenerateConfig, "max_new_tokens"),
    temperature: float = option(RegenerateConfig, "temperature"),
    seq_length: int = option(RegenerateConfig, "seq_length"),
    batch_size: int = option(RegenerateConfig, "batch_size"),
    backend: str = option(RegenerateConfig, "backend"),
    device: str = option(RegenerateConfig, "device"),
    dtype: str = option(RegenerateConfig, "dtype"),
    tensor_parallel_size: int = option(RegenerateConfig, "tensor_parallel_size"),
    gpu_memory_utilization: float = option(RegenerateConfig, "gpu_memory_utilization"),
    cache_dir: Path = option(RegenerateConfig, "cache_dir"),
    overwrite: bool = option(RegenerateConfig, "overwrite"),
) -> None:
    """Rewrite every assistant turn of a chat data set as the verifier's own reply."""
    config = build(RegenerateConfig, **dict(locals()))
    from speculators.regenerate import run_regenerate

    progress = Progress(
        TextColumn("[bold]regenerate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("conversations  {task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
    task = progress.add_task("regenerate", total=None, rate="")
    started: list[float] = []

    def on_progress(done: int, total: int, tokens: int) -> None:
        if not started:  # the bar appears once the model runs
            started.append(time.perf_counter())
            progress.start()
        elapsed = time.perf_counter() - started[0]
        rate = f"{tokens / elapsed:,.0f} tok/s" if elapsed > 0 and tokens else ""
        progress.update(task, completed=done, total=total, rate=rate)

    try:
        with user_errors():
            result = run_regenerate(config, on_progress=on_progress, command=command_line())
    finally:
        progress.stop()
    console.print(summary_table(result))


def summary_table(result: RegenerateResult) -> Table:
    """What a run wrote (shared with `speculators pipeline`)."""
    t, s = result.total, result.stats
    table = Table(title="regenerate", show_header=False)
    table.add_row(
        "conversations",
        f"{t.records:,} written of {result.num_selected:,} selected "
        f"({s.conversations:,} done now, {result.num_resumed:,} by earlier runs)",
    )
    table.add_row("replies", f"{t.replies:,} ({s.replies:,} now)")
    table.add_row("tokens generated", f"{s.generated_tokens:,} now")
    ended = [
        (t.no_user_turn, "without a user turn (skipped)"),
        (t.template_error, "refused by the chat template"),
        (t.empty_reply, "at an empty reply"),
        (t.cut_at_max_new_tokens, "at a reply cut by --max-new-tokens"),
        (t.reached_seq_length, "at --seq-length"),
    ]
    table.add_row(
        "conversations ended early", ", ".join(f"{n:,} {w}" for n, w in ended if n) or "none"
    )
    table.add_row("backend", result.backend)
    table.add_row("throughput", f"{result.tokens_per_second:,.1f} tokens/s")
    table.add_row("time", f"{result.seconds:,.1f} s")
    table.add_row("output", str(result.output_path))
    table.add_row("provenance", str(result.meta_path))
    for note in result.notes:
        table.add_row("note", note)
    return table
