"""`speculators vocab`: token_freq.pt -> d2t.npy / t2d.npy."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from speculators.cli.common import build, console, option, user_errors
from speculators.config import VocabConfig


def vocab(
    token_freq_path: Path = option(VocabConfig, "token_freq_path"),
    draft_vocab_size: int = option(VocabConfig, "draft_vocab_size"),
    target_vocab_size: int = option(VocabConfig, "target_vocab_size"),
    target_model_path: str = option(VocabConfig, "target_model_path"),
    output_path: Path = option(VocabConfig, "output_path"),
    overwrite: bool = option(VocabConfig, "overwrite"),
    allow_unrecorded_token_freq: bool = option(VocabConfig, "allow_unrecorded_token_freq"),
) -> None:
    """Build the draft vocabulary (d2t.npy, t2d.npy) from datagen's token frequencies."""
    config = build(
        VocabConfig,
        token_freq_path=token_freq_path,
        draft_vocab_size=draft_vocab_size,
        target_vocab_size=target_vocab_size,
        target_model_path=target_model_path,
        output_path=output_path,
        overwrite=overwrite,
        allow_unrecorded_token_freq=allow_unrecorded_token_freq,
    )
    from speculators.vocab import run_vocab

    with user_errors():
        result = run_vocab(config)

    table = Table(title="draft vocabulary", show_header=False)
    table.add_row("draft vocab size", f"{result.draft_vocab_size:,}")
    table.add_row("target vocab size", f"{result.target_vocab_size:,}")
    table.add_row("distinct tokens seen", f"{result.num_seen_ids:,}")
    if result.num_padded_ids:
        table.add_row("padded with unseen ids", f"{result.num_padded_ids:,}")
    table.add_row(
        "counted tokens covered", f"{result.coverage:.2%} of {result.num_counted_tokens:,}"
    )
    table.add_row("d2t", str(result.d2t_path))
    table.add_row("t2d", str(result.t2d_path))
    for note in result.notes:
        table.add_row("note", note)
    console.print(table)
