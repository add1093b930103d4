"""The base of every config model: strict, typed, and readable back from JSON."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A Pydantic model that rejects unknown fields and validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def flag(field_name: str) -> str:
    """The CLI flag that sets a config field (`draft_vocab_size` -> `--draft-vocab-size`)."""
    return "--" + field_name.replace("_", "-")


def error_text(error: Any) -> str:
    """The message of one pydantic validation error, without pydantic's "Value error, "."""
    return str(error["msg"]).removeprefix("Value error, ")


def shell_command(argv: Sequence[str]) -> str:
    """A command as one line a shell runs as is: how every recorded or printed command is
    written (data_config.json's `reproducibility.command`, the torchrun line of `train`)."""
    return shlex.join(str(a) for a in argv)
