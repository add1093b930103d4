"""The `speculators` command line: Typer only; each command parses, builds a config and calls
one core function. Nothing heavy (torch, transformers) is imported until a command runs."""

from __future__ import annotations

import sys

import typer

from speculators import __version__
from speculators.cli.common import expand_multi_value_flags
from speculators.cli.datagen import datagen
from speculators.cli.eval import eval_command
from speculators.cli.pipeline import pipeline
from speculators.cli.regenerate import regenerate
from speculators.cli.train import train
from speculators.cli.vocab import vocab

app = typer.Typer(
    name="speculators",
    help="Train EAGLE-3 draft models for vLLM speculative decoding: "
    "(regenerate ->) datagen -> vocab -> train -> eval, or all of it with `pipeline`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"speculators {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train EAGLE-3 draft models for vLLM speculative decoding."""


app.command("regenerate")(regenerate)
app.command("datagen")(datagen)
app.command("vocab")(vocab)
app.command("train")(train)
app.command("eval")(eval_command)
app.command("pipeline")(pipeline)


def main(argv: list[str] | None = None) -> None:
    args = expand_multi_value_flags(sys.argv[1:] if argv is None else argv)
    app(args=args, prog_name="speculators")
