"""Reading conversations: both turn shapes, tolerant JSON arrays, errors with file and line."""

from __future__ import annotations

import json
import re

import pytest

from speculators.errors import UserInputError
from speculators.sources import load_raw_data, read_conversation_file

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
]
SHAREGPT = {
    "id": "a",
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"},
    ],
}


def test_both_shapes_normalize_to_role_content(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [SHAREGPT, {"messages": CHAT}, {"conversations": CHAT}, CHAT]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    convs, note = read_conversation_file(path)
    assert convs == [CHAT] * 4 and note is None


def test_json_array_cut_off_mid_record_keeps_complete_records(tmp_path):
    path = tmp_path / "d.json"
    text = json.dumps([SHAREGPT, SHAREGPT, SHAREGPT], indent=2)
    path.write_text(text[: text.rindex('"Hello!"') + 4])  # the dump ends inside the last record
    convs, note = read_conversation_file(path)
    assert convs == [CHAT, CHAT] and "2 complete records" in note


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(SHAREGPT) + "\n" + '{"conversations": [}\n')
    with pytest.raises(UserInputError, match=r"bad\.jsonl, line 2: malformed JSON"):
        read_conversation_file(path)


def test_malformed_json_array_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"conversations": []},\n  {"conversations": [,]}\n]\n')
    with pytest.raises(UserInputError, match=r"bad\.json, line 3"):
        read_conversation_file(path)


def test_turn_without_known_keys(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"conversations": [{"speaker": "x", "text": "y"}]}) + "\n")
    with pytest.raises(UserInputError, match=r"d\.jsonl, line 1: a turn has neither"):
        read_conversation_file(path)


@pytest.mark.parametrize(
    "name, message",
    [
        ("nosuchdataset", "unknown dataset name. Use a built-in name (sharegpt, ultrachat)"),
        ("./missing.jsonl", "no such file"),
        ("missing.json", "no such file"),
    ],
)
def test_bad_names(name, message):
    with pytest.raises(UserInputError, match=re.escape(f"--train-data-path {name}: {message}")):
        load_raw_data(name, None)


def test_local_file_fingerprint_follows_contents(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(SHAREGPT) + "\n")
    first = load_raw_data(str(path), None)
    assert load_raw_data(str(path), None).fingerprint == first.fingerprint
    path.write_text(json.dumps(SHAREGPT) + "\n" + json.dumps(SHAREGPT) + "\n")
    second = load_raw_data(str(path), None)
    assert second.fingerprint != first.fingerprint and len(second.dataset) == 2
