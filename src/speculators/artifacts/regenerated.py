"""Regenerated conversations: a .jsonl of ShareGPT records plus a sidecar saying how they were made.

`regenerated.jsonl` holds one `{"id", "source_index", "conversations": [{"from", "value"}]}`
record per line (human/gpt/system, what datagen and eval read). It grows by whole chunks: each
chunk is appended in one write and fsynced, then `regenerated.jsonl.meta.json` (written
atomically) records the new committed size. Bytes past the committed size belong to a chunk
that was cut off and are dropped on resume, so a killed run continues where it stopped.
The sidecar also carries the provenance datagen copies into data_config.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from speculators.artifacts.atomic import atomic_write_json
from speculators.errors import UserInputError

FORMAT = "speculators-regenerated-conversations"
ROLE_NAMES = {"user": "human", "assistant": "gpt", "system": "system"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Source(_Section):
    train_data_path: str
    fingerprint: str  # of the conversations' contents
    num_records: int


class Selection(_Section):
    seed: int
    max_samples: int | None
    num_selected: int


class Sampling(_Section):
    temperature: float
    max_new_tokens: int
    seq_length: int | None


class Progress(_Section):
    conversations_done: int = 0  # of the selection, in order
    num_records: int = 0
    num_bytes: int = 0  # committed size of the .jsonl
    complete: bool = False


class RegenerationMeta(_Section):
    format: str = FORMAT
    version: int = 1
    speculators_version: str
    generated_at: str
    command: str
    verifier: str  # target_model_path as given
    verifier_resolved: str  # an absolute path for local models
    source: Source
    selection: Selection
    sampling: Sampling
    engine: dict[str, Any]  # backend, device, dtype, package versions (of the latest run)
    progress: Progress = Progress()
    stats: dict[str, int] = {}

    def settings(self) -> dict[str, Any]:
        """What the replies depend on: a resume must match all of it."""
        return {
            "target_model_path": self.verifier_resolved,
            "train_data_path": self.source.train_data_path,
            "source_fingerprint": self.source.fingerprint,
            "seed": self.selection.seed,
            "max_samples": self.selection.max_samples,
            "temperature": self.sampling.temperature,
            "max_new_tokens": self.sampling.max_new_tokens,
            "seq_length": self.sampling.seq_length,
        }

    def provenance(self) -> dict[str, Any]:
        """The summary datagen records in data_config.json (`data.regenerated_from`)."""
        return {
            "verifier": self.verifier,
            "source_train_data_path": self.source.train_data_path,
            "seed": self.selection.seed,
            "max_samples": self.selection.max_samples,
            **self.sampling.model_dump(),
            "backend": self.engine.get("backend"),
            "num_conversations": self.progress.num_records,
            "complete": self.progress.complete,
            "generated_at": self.generated_at,
        }


def meta_path(output: Path) -> Path:
    return output.with_name(output.name + ".meta.json")


def save_regeneration_meta(output: Path, meta: RegenerationMeta) -> None:
    atomic_write_json(meta_path(output), meta.model_dump(mode="json"))


def load_regeneration_meta(data_path: Path) -> RegenerationMeta | None:
    """The sidecar of a regenerated .jsonl, or None for any other file (no sidecar)."""
    side = meta_path(data_path)
    if not side.is_file():
        return None
    try:
        meta = RegenerationMeta.model_validate(json.loads(side.read_text()))
    except (OSError, ValueError, ValidationError) as e:
        raise UserInputError(
            f"{side} is not a valid regeneration sidecar ({e.__class__.__name__}). It is written "
            "by `speculators regenerate`; delete it (the .jsonl stays usable) or regenerate."
        ) from None
    return meta if meta.format == FORMAT else None


def sharegpt_record(
    record_id: str, source_index: int, messages: list[dict[str, str]]
) -> dict[str, Any]:
    turns = [
        {"from": ROLE_NAMES.get(m["role"], m["role"]), "value": m["content"]} for m in messages
    ]
    return {"id": record_id, "source_index": source_index, "conversations": turns}


def append_chunk(output: Path, records: list[dict[str, Any]]) -> int:
    """Append records as one write, fsynced; returns the file's new size."""
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with open(output, "ab") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def truncate_uncommitted(output: Path, committed: int) -> bool:
    """Cut the file back to its committed size; True if a cut-off chunk was dropped."""
    size = output.stat().st_size if output.exists() else 0
    if size < committed:
        raise UserInputError(
            f"--output-path {output}: the file is shorter ({size} bytes) than its sidecar "
            f"{meta_path(output).name} records ({committed} bytes); it was changed by something "
            "else. Pass --overwrite to regenerate it from the start."
        )
    if size > committed:
        os.truncate(output, committed)
    return size > committed
