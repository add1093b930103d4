"""The base of every config model: strict, typed, and readable back from JSON."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A Pydantic model that rejects unknown fields and validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def flag(field_name: str) -> str:
    """The CLI flag that sets a config field (`draft_vocab_size` -> `--draft-vocab-size`)."""
    return "--" + field_name.replace("_", "-")
