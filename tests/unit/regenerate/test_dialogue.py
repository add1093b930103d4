"""Which turns the verifier answers, and that each reply is written with the regenerated history
(a fake engine that answers with what it was asked, so the prompts can be read back)."""

from __future__ import annotations

import pytest

from speculators.config.regenerate import RegenerateConfig
from speculators.regenerate.dialogue import Dialogue, prompt_segments
from speculators.regenerate.engine import Reply, split_at_stop
from speculators.regenerate.run import regenerate_chunk


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(
    "messages, expected",
    [
        ([user("a"), bot("x"), user("b"), bot("y")], [[user("a")], [user("b")]]),
        ([SYSTEM, user("a"), bot("x")], [[SYSTEM, user("a")]]),
        ([bot("hello"), user("a"), bot("x")], [[user("a")]]),  # nothing to answer yet: dropped
        ([user("a"), bot("x"), bot("more")], [[user("a")]]),  # a second reply in a row: dropped
        ([user("a"), user("b"), bot("x")], [[user("a"), user("b")]]),
        ([user("a")], [[user("a")]]),  # a prompt without a reply gets one
        ([user("a"), bot("x"), SYSTEM], [[user("a")]]),  # trailing turns without a user turn
        ([SYSTEM, bot("x")], []),
        ([user("  "), bot("x")], []),
        ([], []),
    ],
)
def test_prompt_segments(messages, expected):
    assert prompt_segments(messages) == expected


def test_split_at_stop():
    assert split_at_stop([5, 6, 2, 9, 2], 10, {2}) == Reply([5, 6], True)
    assert split_at_stop([5, 6, 7, 8], 3, {2}) == Reply([5, 6, 7], False)
    assert split_at_stop([5, 6, 2], 2, {2}) == Reply([5, 6], False)  # the stop came too late
    assert split_at_stop([2, 5], 4, {2}) == Reply([], True)


class CharTokenizer:
    """Tokens are characters; the 'template' joins turns as `role: content` lines."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        if any(m["content"] == "REFUSE" for m in messages):
            raise ValueError("template refuses")
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant: " if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


class EchoEngine:
    """Replies `re:<last user line>`; `EMPTY` gets an empty reply, `LONG` a reply over budget."""

    name, device, dtype, max_context = "fake", "cpu", "float32", 10_000

    def __init__(self):
        self.prompts: list[str] = []
        self.batches: list[int] = []

    def generate(self, prompts, budgets, seeds):
        self.batches.append(len(prompts))
        out = []
        for ids, budget in zip(prompts, budgets):
            text = "".join(map(chr, ids))
            self.prompts.append(text)
            last = [line for line in text.splitlines() if line.startswith("user: ")][-1][6:]
            reply = "" if last == "EMPTY" else "x" * 50 if last == "LONG" else f"re:{last}"
            out.append(split_at_stop([ord(c) for c in reply] + [0], budget, {0}))
        return out


def config(**kw) -> RegenerateConfig:
    return RegenerateConfig(target_model_path="m", train_data_path="d", **kw)


def dialogue(i, messages):
    return Dialogue(i, i, str(i), prompt_segments(messages))


def test_each_reply_is_written_with_the_regenerated_history():
    engine = EchoEngine()
    d = dialogue(0, [SYSTEM, user("a"), bot("ORIGINAL"), user("b"), bot("ORIGINAL")])
    stats = regenerate_chunk(engine, CharTokenizer(), [d], config(batch_size=4))
    assert d.history == [SYSTEM, user("a"), bot("re:a"), user("b"), bot("re:b")]
    assert engine.prompts[1] == "system: Be brief.\nuser: a\nassistant: re:a\nuser: b\nassistant: "
    assert "ORIGINAL" not in "".join(engine.prompts)
    assert (stats.replies, stats.records, stats.generated_tokens) == (2, 1, 8)


def test_rounds_batch_the_chunk_and_early_ends_are_counted():
    engine = EchoEngine()
    dialogues = [
        dialogue(0, [user("a"), bot("x"), user("b"), bot("y"), user("c"), bot("z")]),
        dialogue(1, [user("EMPTY"), bot("x")]),  # no reply at all: no record
        dialogue(2, [user("a"), bot("x"), user("EMPTY"), bot("y"), user("c"), bot("z")]),
        dialogue(3, [user("LONG"), bot("x"), user("b"), bot("y")]),  # cut: what follows dropped
        dialogue(4, [user("a"), bot("x"), user("REFUSE"), bot("y")]),
        dialogue(5, [bot("no user turn")]),
    ]
    dialogues[5].end("no_user_turn")
    stats = regenerate_chunk(
        engine, CharTokenizer(), dialogues, config(batch_size=2, max_new_tokens=20)
    )
    assert [d.num_replies for d in dialogues] == [3, 0, 1, 1, 1, 0]
    assert dialogues[3].history[-1] == bot("x" * 20)
    assert engine.batches == [2, 2, 1, 2, 1]  # round 1: five prompts; round 2: d0, d2; round 3: d0
    assert (stats.empty_reply, stats.cut_at_max_new_tokens, stats.template_error) == (2, 1, 1)
    assert (stats.no_user_turn, stats.records, stats.conversations) == (1, 4, 6)


def test_seq_length_budget_shrinks_the_reply_and_ends_the_conversation():
    engine = EchoEngine()
    d = dialogue(0, [user("LONG"), bot("x"), user("b"), bot("y")])
    prompt = len("user: LONG\nassistant: ")
    stats = regenerate_chunk(engine, CharTokenizer(), [d], config(seq_length=prompt + 7))
    assert d.history[-1] == bot("x" * 7) and stats.reached_seq_length == 1
    d = dialogue(0, [user("a" * 40), bot("x")])
    stats = regenerate_chunk(engine, CharTokenizer(), [d], config(seq_length=20))
    assert d.num_replies == 0 and stats.reached_seq_length == 1 and stats.records == 0
