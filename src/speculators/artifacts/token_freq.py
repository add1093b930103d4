"""token_freq.pt: token id -> count over loss-masked tokens, plus a sidecar saying what was counted.

The .pt file is exactly what the reference tools write (`torch.save` of `dict[int, int]`), so
files move freely between tools. The sidecar `token_freq.pt.meta.json` records the tokenizer and
data the counts came from, so that a stale file is never silently reused for other data.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from speculators.artifacts.atomic import atomic_torch_save, atomic_write_json
from speculators.config.base import StrictModel
from speculators.errors import UserInputError


class TokenFreqMeta(StrictModel):
    """What a token_freq.pt was counted over."""

    fingerprint: str  # hash of tokenizer + dataset + preprocessing settings
    target_model_path: str
    train_data_path: str
    vocab_size: int
    num_samples: int
    num_tokens: int


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def save_token_freq(path: Path, counts: dict[int, int], meta: TokenFreqMeta) -> None:
    atomic_torch_save(path, {int(k): int(v) for k, v in counts.items()})
    atomic_write_json(meta_path(path), meta.model_dump(mode="json"))


def load_token_freq_meta(path: Path) -> TokenFreqMeta | None:
    """The sidecar of `path`, or None for a file written by another tool (no sidecar)."""
    side = meta_path(path)
    if not side.exists():
        return None
    try:
        return TokenFreqMeta.model_validate(json.loads(side.read_text()))
    except (OSError, ValueError, ValidationError) as e:
        raise UserInputError(
            f"{side} is not a valid token-frequency sidecar ({e.__class__.__name__}). Delete it "
            "and rerun `speculators datagen` to recount."
        ) from None


def load_token_freq(path: Path) -> dict[int, int]:
    """Read and check a token_freq.pt; every problem is a UserInputError naming the file."""
    import torch

    if not path.is_file():
        raise UserInputError(
            f"token frequency file {path} does not exist. `speculators datagen` writes it "
            "(default ./token_freq.pt); pass its location with --token-freq-path."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise UserInputError(
            f"cannot read token frequency file {path}: {e.__class__.__name__}: {e}. It must be a "
            "torch.save of a dict mapping token id (int) to count (int), as `speculators datagen` "
            "writes; rerun datagen to recreate it."
        ) from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, int) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in obj.items()
    ):
        raise UserInputError(
            f"token frequency file {path} holds a {type(obj).__name__}, not a dict[int, int] of "
            "token id -> count. Recreate it with `speculators datagen`."
        )
    negative = [k for k, v in obj.items() if v < 0 or k < 0]
    if negative:
        raise UserInputError(
            f"token frequency file {path} has negative ids or counts (e.g. id {negative[0]}); "
            "recreate it with `speculators datagen`."
        )
    return obj
