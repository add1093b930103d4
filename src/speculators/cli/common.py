"""What every subcommand shares: option help from config fields and the user-error path."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.markup import escape

from speculators.config.base import error_text, flag, shell_command
from speculators.errors import UserInputError
from speculators.launcher import COMMAND_ENV

console = Console()
err_console = Console(stderr=True)

ModelT = TypeVar("ModelT", bound=BaseModel)


def option(config_cls: type[BaseModel], name: str, *decls: str, **kwargs: Any) -> Any:
    """A typer.Option for config field `name`: its flag, default and help come from the field."""
    field = config_cls.model_fields[name]
    default = kwargs.pop("default", field.default)
    if default is PydanticUndefined:
        default = ...
    return typer.Option(default, flag(name), *decls, help=field.description, **kwargs)


def fail(message: str) -> NoReturn:
    """Print one clear error paragraph and exit with code 2 (the CLI's usage-error code)."""
    # Escaped: messages may contain brackets (`pip install 'speculators[loggers]'`).
    err_console.print(
        f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(2)


def _describe(error: Any) -> str:
    msg = error_text(error)
    loc = [str(p) for p in error.get("loc", ()) if not isinstance(p, int)]
    if not loc:
        return msg
    value = error.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict) else ""
    return f"{flag(loc[0])}: {msg}{shown}"


def build(config_cls: type[ModelT], **values: Any) -> ModelT:
    """Validate flags into a config; a bad value exits 2 with a message naming the flag."""
    try:
        return config_cls(**values)
    except ValidationError as e:
        fail("; ".join(_describe(err) for err in e.errors()))


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn UserInputError (raised by core code for bad files and data), and file-system errors
    that name their path, into a clean exit 2."""
    try:
        yield
    except UserInputError as e:
        fail(str(e))
    except OSError as e:
        # A file-system failure no check foresaw (a disk filling up under a library's writes):
        # still one message naming the path, never a traceback.
        if e.filename is None:
            raise
        fail(
            f"{e.filename}: {e.strerror or e}. Check that path, its permissions and the free "
            "space there, then rerun the same command: files already written are complete."
        )
    except KeyboardInterrupt:
        err_console.print("interrupted; files already written are complete and a rerun resumes.")
        raise typer.Exit(130) from None


# Flags that take several space-separated values, as the reference spells them
# (`--layer-ids 2 28 54`). Click options take one value each, so main() rewrites them.
MULTI_VALUE_FLAGS = ("--layer-ids",)


def expand_multi_value_flags(argv: list[str]) -> list[str]:
    """`--layer-ids 2 28 54` -> `--layer-ids 2 --layer-ids 28 --layer-ids 54`."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        out.append(arg)
        i += 1
        if arg in MULTI_VALUE_FLAGS:
            first = True
            while i < len(argv) and argv[i].lstrip("-").isdigit():
                if not first:
                    out.append(arg)
                out.append(argv[i])
                first = False
                i += 1
    return out


def command_line() -> str:
    """The command as the user typed it, for reproducibility records (in a torchrun worker, the
    one its launcher was given: the worker itself runs `... --config FILE`)."""
    return os.environ.get(COMMAND_ENV) or shell_command(["speculators", *sys.argv[1:]])


def config_option(written: str) -> Any:
    """`--config FILE`: a command's settings as JSON, as the launcher or the pipeline hands them
    to it (`written`: where the command records them)."""
    return typer.Option(
        None,
        "--config",
        help=f"JSON file of these settings ({written}); flags given as well override it.",
    )


def with_config_file(
    ctx: typer.Context, values: dict[str, Any], path: Path | None
) -> dict[str, Any]:
    """`values` (every flag) with a --config file's settings under the flags given on the
    command line."""
    if path is None:
        return values
    given = {k: v for k, v in values.items() if _from_command_line(ctx, k)}
    settings = _read_config_file(path)
    unknown = [k for k in settings if k not in values]
    if unknown:
        example = next(k for k in values if "_" in k)
        fail(
            f"--config {path}: unknown setting {unknown[0]!r}. Its keys are this command's "
            f"flags with _ for - ({example} for --{example.replace('_', '-')}; see --help)."
        )
    return settings | given


def _from_command_line(ctx: typer.Context, name: str) -> bool:
    # By name: typer ships its own copy of click, whose enum is not click's.
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"--config {path}: cannot read it as JSON ({e.__class__.__name__}: {e}).")
    if not isinstance(values, dict):
        fail(f'--config {path}: expected a JSON object of settings, e.g. {{"epochs": 3}}.')
    return values
