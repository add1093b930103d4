"""`speculators regenerate` on a tiny random Llama: the records it writes, datagen reading them
with their provenance, a killed run resumed to the same bytes, and every bad input (exit 2, one
message naming the flag, nothing written lost)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import build_tiny_llama
from typer.testing import CliRunner

from speculators.cli import app
from speculators.regenerate.engine import Reply

CONVERSATIONS = [
    {
        "id": "a",
        "conversations": [{"from": "human", "value": "Hello!"}, {"from": "gpt", "value": "Hi"}],
    },
    {"id": "b", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {
        "id": "c",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Tell me a story about a cat."},
            {"role": "assistant", "content": "A cat and a dog jumped over the lazy fox."},
            {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": "Then they ate numbers 1 2 3."},
        ],
    },
    {"id": "d", "conversations": [{"from": "gpt", "value": "I start, nobody asked."}]},
    *[
        {
            "id": f"n{n}",
            "conversations": [
                {"from": "human", "value": "Count " + " ".join(map(str, range(n)))},
                {"from": "gpt", "value": "The quick brown fox. " * n},
                {"from": "human", "value": "Again?"},
                {"from": "gpt", "value": "Yes."},
            ],
        }
        for n in (1, 3, 5, 8, 2, 13)
    ],
]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(res, *words):
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "error:" in text and "Traceback" not in text
    for word in words:
        assert word in text, text
    return text


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("regen-data") / "convs.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    return path


def regen(model, data, out, *extra):
    return [
        "regenerate", "--target-model-path", model, "--train-data-path", data,
        "--output-path", out, "--max-new-tokens", 6, "--batch-size", 2, "--device", "cpu",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("regen") / "regenerated.jsonl"
    res = invoke(*regen(tiny_llama, data, out))
    assert res.exit_code == 0, res.output
    return out


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_keep_the_user_turns_and_replace_the_replies(uninterrupted, data):
    source = {c["id"]: c for c in CONVERSATIONS}
    out = records(uninterrupted)
    assert {r["id"] for r in out} == set(source) - {"d"}  # d has no user turn
    for r in out:
        turns = r["conversations"]
        assert turns[-1]["from"] == "gpt" and all(t["value"] for t in turns)
        original = source[r["id"]].get("conversations") or source[r["id"]]["messages"]
        users = [
            t.get("value", t.get("content"))
            for t in original
            if t.get("from", t.get("role")) in ("human", "user")
        ]
        got = [t["value"] for t in turns if t["from"] == "human"]
        assert got == users[: len(got)]
        assert "Hi" not in [t["value"] for t in turns if t["from"] == "gpt"]
    # datagen's selection: the order of the seed-0 permutation
    import numpy as np

    order = np.random.default_rng(0).permutation(len(CONVERSATIONS)).tolist()
    assert [r["source_index"] for r in out] == [i for i in order if CONVERSATIONS[i]["id"] != "d"]
    meta = json.loads(uninterrupted.with_name("regenerated.jsonl.meta.json").read_text())
    assert meta["progress"]["complete"] and meta["progress"]["num_records"] == len(out)
    assert meta["sampling"] == {"temperature": 0.0, "max_new_tokens": 6, "seq_length": None}
    assert meta["stats"]["no_user_turn"] == 1 and meta["engine"]["backend"] == "transformers"


def test_a_rerun_of_a_complete_file_changes_nothing(tiny_llama, data, uninterrupted, tmp_path):
    out = tmp_path / "copy.jsonl"
    shutil.copy(uninterrupted, out)
    shutil.copy(
        uninterrupted.with_name("regenerated.jsonl.meta.json"), tmp_path / "copy.jsonl.meta.json"
    )
    before = out.read_bytes()
    res = invoke(*regen(tiny_llama, data, out))
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == before and "0 done now" in " ".join(res.output.split())


def test_datagen_reads_the_records_and_records_their_provenance(
    tiny_llama, uninterrupted, tmp_path
):
    res = invoke(
        "datagen", "--target-model-path", tiny_llama, "--train-data-path", uninterrupted,
        "--output-dir", tmp_path / "data", "--token-freq-path", tmp_path / "data" / "tf.pt",
        "--seq-length", 96, "--device", "cpu", "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "data" / "data_config.json").read_text())
    provenance = config["data"]["regenerated_from"]
    assert provenance["verifier"] == str(tiny_llama) and provenance["complete"] is True
    assert provenance["temperature"] == 0.0 and provenance["max_new_tokens"] == 6
    assert "replies regenerated by" in " ".join(res.output.split())


def test_killed_run_resumes_to_the_same_bytes(
    tiny_llama, data, uninterrupted, tmp_path, monkeypatch
):
    import speculators.regenerate.run as run

    out = tmp_path / "killed.jsonl"
    real = run.regenerate_chunk
    calls = []

    def dies_in_the_second_chunk(engine, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            engine.generate = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())
        return real(engine, *args, **kwargs)

    monkeypatch.setattr(run, "regenerate_chunk", dies_in_the_second_chunk)
    res = invoke(*regen(tiny_llama, data, out))
    assert res.exit_code == 130, res.output
    meta = json.loads((tmp_path / "killed.jsonl.meta.json").read_text())
    assert meta["progress"]["conversations_done"] == 8 and not meta["progress"]["complete"]
    with open(out, "ab") as f:  # a chunk cut off mid-write
        f.write(b'{"id": "torn", "conversa')
    redone = []

    def counted(engine, tokenizer, dialogues, *args, **kwargs):
        redone.extend(d.source_index for d in dialogues)
        return real(engine, tokenizer, dialogues, *args, **kwargs)

    monkeypatch.setattr(run, "regenerate_chunk", counted)
    res = invoke(*regen(tiny_llama, data, out))
    assert res.exit_code == 0, res.output
    assert len(redone) == len(CONVERSATIONS) - 8  # the committed chunk is not redone
    assert out.read_bytes() == uninterrupted.read_bytes()


def test_other_settings_are_refused_then_overwritten(tiny_llama, data, uninterrupted, tmp_path):
    out = tmp_path / "r.jsonl"
    shutil.copy(uninterrupted, out)
    shutil.copy(
        uninterrupted.with_name("regenerated.jsonl.meta.json"), tmp_path / "r.jsonl.meta.json"
    )
    before = out.read_bytes()
    refused(
        invoke(*regen(tiny_llama, data, out, "--temperature", 0.7)),
        "--temperature",
        "was 0.0, now 0.7",
        "--overwrite",
    )
    assert out.read_bytes() == before
    res = invoke(*regen(tiny_llama, data, out, "--max-samples", 3, "--overwrite"))
    assert res.exit_code == 0, res.output
    assert len(records(out)) == 3


def test_a_foreign_file_is_not_replaced(tiny_llama, data, tmp_path):
    out = tmp_path / "mine.jsonl"
    out.write_text('{"precious": true}\n')
    refused(invoke(*regen(tiny_llama, data, out)), "--output-path", "not written by")
    assert out.read_text() == '{"precious": true}\n'


def test_no_chat_template(tiny_llama, data, tmp_path):
    model = tmp_path / "plain"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    refused(
        invoke(*regen(model, data, tmp_path / "o.jsonl")), "--target-model-path", "no chat template"
    )
    assert not (tmp_path / "o.jsonl").exists()


def test_missing_user_turns(tiny_llama, tmp_path):
    data = tmp_path / "bots.jsonl"
    data.write_text(json.dumps({"conversations": [{"from": "gpt", "value": "hi"}]}) + "\n")
    refused(
        invoke(*regen(tiny_llama, data, tmp_path / "o.jsonl")),
        "--train-data-path",
        "has a user turn",
    )
    assert not (tmp_path / "o.jsonl").exists()


def test_empty_replies_from_the_verifier(tiny_llama, data, tmp_path, monkeypatch):
    import speculators.regenerate.hf_engine as hf

    def nothing(self, prompts, budgets, seeds):
        return [Reply([], True) for _ in prompts]

    monkeypatch.setattr(hf.TransformersEngine, "generate", nothing)
    text = refused(invoke(*regen(tiny_llama, data, tmp_path / "o.jsonl")), "--target-model-path")
    assert "reply was empty (it ended its turn at once) in 7," in text  # and 1 without a user turn


def test_unwritable_output(tiny_llama, data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    refused(invoke(*regen(tiny_llama, data, blocker / "o.jsonl")), "--output-path", "cannot write")
    refused(invoke(*regen(tiny_llama, data, tmp_path)), "--output-path")  # a directory / .jsonl


def test_a_negative_seed_is_refused(tiny_llama, data, tmp_path):
    out = tmp_path / "o.jsonl"
    refused(invoke(*regen(tiny_llama, data, out, "--seed", "-1")), "--seed")
    assert not out.exists()


def test_vllm_missing_names_the_extra(tiny_llama, data, tmp_path, monkeypatch):
    import speculators.models.vllm as engine

    monkeypatch.setattr(engine, "vllm_available", lambda: False)
    refused(
        invoke(*regen(tiny_llama, data, tmp_path / "o.jsonl", "--backend", "vllm")),
        "pip install 'speculators[datagen]'",
    )


def test_second_template_stops_at_its_end_of_turn(tmp_path, data):
    """A Llama-3 template: <|eot_id|> ends replies (the tokenizer's eos is unrelated)."""
    from transformers import AutoTokenizer

    from speculators.regenerate.setup import _stop_ids

    model = build_tiny_llama(tmp_path / "m", chat_template=__import__("conftest").LLAMA3_TEMPLATE)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.eos_token = "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") in _stop_ids(tokenizer, str(model))
