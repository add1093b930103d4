"""`speculators eval`: offline acceptance length of a trained draft against its verifier.

    speculators eval ./checkpoints/9 --data-path sharegpt --num-prompts 50 --max-new-tokens 256
    # CPU-sized (SmolLM2 verifier from the demo):
    speculators eval ./speculators-demo/checkpoints/2 --num-prompts 5 --max-new-tokens 64 \\
        --output-dir ./eval
    # in vLLM (GPU): acceptance from vLLM's counters, speedup against the verifier alone
    speculators eval ./checkpoints/9 --engine vllm --num-prompts 50 --max-new-tokens 256
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from speculators.cli.common import build, console, option, user_errors
from speculators.config import EvalConfig


def results_table(metrics: dict) -> Table:
    """The eval numbers as vLLM reports them (shared with `speculators pipeline`)."""
    where = "vLLM" if metrics.get("engine") == "vllm" else "offline, verifier in transformers"
    table = Table(title=f"speculative decoding ({where})", show_header=False)
    table.add_row("mean acceptance length", f"{metrics['mean_acceptance_length']:.3f}")
    rates = " ".join(f"{r:.3f}" for r in metrics["per_position_acceptance_rate"])
    table.add_row("per-position acceptance rate", rates)
    table.add_row("draft acceptance rate", f"{metrics['draft_acceptance_rate']:.3f}")
    table.add_row(
        "verifier forward passes / token", f"{metrics['verifier_forward_passes_per_token']:.3f}"
    )
    table.add_row("speculative tokens", str(metrics["num_speculative_tokens"]))
    table.add_row("temperature", f"{metrics['temperature']:g}")
    table.add_row(
        "prompts / generated tokens",
        f"{metrics['num_prompts']} / {metrics['num_generated_tokens']:,}",
    )
    table.add_row(
        "time", f"{metrics['seconds']:.1f} s ({metrics['tokens_per_second']:.1f} tokens/s)"
    )
    if "speedup" in metrics:
        table.add_row(
            "speedup (output tokens/s)",
            f"{metrics['speedup']:.2f}x ({metrics['speculative_tokens_per_second']:.1f} vs "
            f"{metrics['baseline_tokens_per_second']:.1f} without the draft)",
        )
        table.add_row(
            "greedy outputs identical",
            f"{metrics['greedy_outputs_identical']} of {metrics['greedy_outputs_compared']}",
        )
    for note in metrics.get("notes", []):
        table.add_row("note", note)
    return table


def eval_command(
    checkpoint_dir: Path = typer.Argument(
        ..., help=EvalConfig.model_fields["checkpoint_dir"].description, show_default=False
    ),
    verifier_name_or_path: str = option(EvalConfig, "verifier_name_or_path"),
    data_path: str = option(EvalConfig, "data_path"),
    num_prompts: int = option(EvalConfig, "num_prompts"),
    max_new_tokens: int = option(EvalConfig, "max_new_tokens"),
    num_speculative_tokens: int = option(EvalConfig, "num_speculative_tokens"),
    temperature: float = option(EvalConfig, "temperature"),
    seed: int = option(EvalConfig, "seed"),
    max_prompt_tokens: int = option(EvalConfig, "max_prompt_tokens"),
    output_dir: Path = option(EvalConfig, "output_dir"),
    device: str = option(EvalConfig, "device"),
    dtype: str = option(EvalConfig, "dtype"),
    engine: str = option(EvalConfig, "engine"),
    concurrency: int = option(EvalConfig, "concurrency"),
    tensor_parallel_size: int = option(EvalConfig, "tensor_parallel_size"),
    gpu_memory_utilization: float = option(EvalConfig, "gpu_memory_utilization"),
    overwrite: bool = option(EvalConfig, "overwrite"),
    allow_verifier_mismatch: bool = option(EvalConfig, "allow_verifier_mismatch"),
) -> None:
    """Measure a draft's acceptance length offline: speculative decoding against its verifier."""
    config = build(EvalConfig, **dict(locals()))
    from speculators.evaluate import run_eval

    progress = Progress(
        TextColumn("[bold]eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("prompts  {task.fields[accept]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with user_errors(), progress:
        task = progress.add_task("eval", total=config.num_prompts, accept="")

        def on_progress(done: int, total: int, stats) -> None:
            text = f"acceptance length {stats.mean_acceptance_length:.2f}"
            progress.update(task, completed=done, total=total, accept=text)

        result = run_eval(config, on_progress=on_progress)

    console.print(results_table(result.to_json()))
    console.print(f"results: {result.results_path}  generations: {result.generations_path}")
