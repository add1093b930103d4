"""Reading JSON records from a local .jsonl file or .json array, tolerantly and with line numbers.

Shared by datagen (training conversations) and eval (prompts). A .json array is decoded record
by record, so a file cut off mid-record (the ShareGPT V3 dump is) still yields every complete
record and a note; any other syntax error names the file and line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from speculators.errors import UserInputError

_SEPARATOR = re.compile(r"[\s,]*")


def _skip_separators(text: str, pos: int) -> int:
    match = _SEPARATOR.match(text, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _jsonl(path: Path, text: str, flag: str) -> list[tuple[Any, str]]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{flag} {path}, line {lineno}"
        try:
            records.append((json.loads(line), where))
        except json.JSONDecodeError as e:
            raise UserInputError(
                f"{where}: malformed JSON ({e.msg} at column {e.colno}). Each line of a .jsonl "
                "file must be one JSON object; fix or remove that line."
            ) from None
    return records


def _json_array(path: Path, text: str, flag: str) -> tuple[list[tuple[Any, str]], str | None]:
    decoder = json.JSONDecoder()
    records: list[tuple[Any, str]] = []
    pos = _skip_separators(text, text.index("[") + 1)
    while pos < len(text) and text[pos] != "]":
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if not text.rstrip().endswith("]"):
                note = f"{path} ends mid-record; read its {len(records):,} complete records"
                return records, note
            line = text.count("\n", 0, e.pos) + 1
            raise UserInputError(
                f"{flag} {path}, line {line}: malformed JSON ({e.msg}). Fix the file or export "
                "it again."
            ) from None
        records.append((record, f"{flag} {path}, record {len(records)}"))
        pos = _skip_separators(text, pos)
    return records, None


def read_json_records(path: Path, flag: str) -> tuple[list[tuple[Any, str]], str | None]:
    """Every (record, where) of a .jsonl or .json-array file, and a note when it was cut off.

    `where` names the file and line (or record index) for error messages about that record.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"{flag} {path}: cannot read it ({e}).") from None
    if text.lstrip().startswith("["):
        return _json_array(path, text, flag)
    return _jsonl(path, text, flag), None
