"""token_freq.pt: token id -> count over loss-masked tokens, with a record of what was counted.

The file is what the reference tools write and read, `torch.save` of a plain `dict[int, int]`:
`torch.load(path)` returns exactly the counts, nothing else. The record of what they were
counted over (the verifier's tokenizer and vocab size, the data, datagen's fingerprint) travels
inside the same file: torch.save writes a zip archive, and the record is one more member of it,
`<archive>/speculators/token_freq_meta.json`, which torch.load never reads. A copy of the file
keeps its record; no reader sees a changed dict. Files from earlier versions of this tool keep
their record in a sidecar, `token_freq.pt.meta.json`, which is still read.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from speculators.artifacts.atomic import atomic_path
from speculators.errors import UserInputError

RECORD_NAME = "speculators/token_freq_meta.json"


class TokenFreqMeta(BaseModel):
    """What a token_freq.pt was counted over."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    fingerprint: str  # datagen's: tokenizer + dataset + preprocessing settings + model + layers
    target_model_path: str
    train_data_path: str
    vocab_size: int
    num_samples: int
    num_tokens: int
    tokenizer: str | None = None  # the verifier fingerprint's tokenizer part (token ids)


def meta_path(path: Path) -> Path:
    """The sidecar earlier versions wrote beside the file."""
    return path.with_name(path.name + ".meta.json")


def save_token_freq(path: Path, counts: dict[int, int], meta: TokenFreqMeta) -> None:
    import torch

    plain = {int(k): int(v) for k, v in counts.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(plain, f)
        with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_STORED) as archive:
            prefix = archive.namelist()[0].split("/")[0]
            archive.writestr(f"{prefix}/{RECORD_NAME}", meta.model_dump_json(indent=2))
    # A sidecar left by an earlier version describes the file this one replaced.
    meta_path(path).unlink(missing_ok=True)


def load_token_freq_meta(path: Path) -> TokenFreqMeta | None:
    """The record inside `path`, else its sidecar (earlier versions), else None (a file written
    by another tool, or by hand)."""
    text, where = None, path
    try:
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/" + RECORD_NAME)), None)
            text = archive.read(member).decode() if member else None
    except (OSError, zipfile.BadZipFile, ValueError):
        text = None  # torch's legacy (non-zip) format or not a torch file: no record inside
    if text is None:
        where = meta_path(path)
        if not where.exists():
            return None
        try:
            text = where.read_text()
        except OSError as e:
            raise UserInputError(f"cannot read {where} ({e.strerror}).") from None
    try:
        return TokenFreqMeta.model_validate(json.loads(text))
    except (ValueError, ValidationError) as e:
        raise UserInputError(
            f"{where}: the record of what the token counts were made from is damaged "
            f"({e.__class__.__name__}). Rerun `speculators datagen` to recount."
        ) from None


def load_token_freq(path: Path) -> dict[int, int]:
    """Read and check a token_freq.pt; every problem is a UserInputError naming the file."""
    import torch

    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise UserInputError(
            f"token frequency file {path} {what}. `speculators datagen` writes it "
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
    if not any(obj.values()):
        raise UserInputError(
            f"token frequency file {path} counts no tokens ({len(obj)} ids, all counts 0): a "
            "draft vocabulary chosen from it would be arbitrary. It must come from `speculators "
            "datagen` over data with assistant turns; rerun datagen to recount."
        )
    return obj
