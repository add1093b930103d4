"""Loss masks: 1 exactly on assistant text and the end-of-turn token after it, for ChatML and
Llama-3 templates, with truncation."""

from __future__ import annotations

import itertools

import pytest

from speculators.chat_template import end_of_turn_tokens
from speculators.datagen.preprocess import (
    NO_ASSISTANT,
    NO_SUPERVISED,
    OK,
    TEMPLATE_ERROR,
    tokenize_conversation,
)

MULTI_TURN = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Say hello"},
    {"role": "assistant", "content": "hello"},  # also inside the user turn: must not match there
    {"role": "user", "content": "Tell me a story about a cat and a dog."},
    {"role": "assistant", "content": "  The quick brown fox jumps over the lazy dog.\n"},
    {"role": "user", "content": "And numbers?"},
    {"role": "assistant", "content": "Numbers 0 1 2 3 4 5"},
]


SAMPLE_CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
    ],
    [
        {"role": "user", "content": "def add(a, b):"},
        {"role": "assistant", "content": "    return a + b"},
    ],
]


# What each fixture template writes after a reply, and how it renders the reply's own text.
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}
RENDERED_REPLY = {"chatml": str.lstrip, "llama3": str.strip}  # ChatML keeps trailing whitespace


@pytest.fixture(params=["chatml", "llama3"])
def template(request):
    from transformers import AutoTokenizer

    # The fixtures' tokenizers: a real byte-level BPE with a ChatML / Llama-3 chat template.
    path = request.getfixturevalue("tiny_llama" if request.param == "chatml" else "tiny_llama3")
    return request.param, AutoTokenizer.from_pretrained(path)


@pytest.fixture
def tokenizer(template):
    return template[1]


def runs(tokenizer, ids, mask, value=1):
    """Decoded maximal runs of tokens whose mask equals `value`."""
    out = []
    for on, group in itertools.groupby(zip(ids, mask), key=lambda x: x[1]):
        if on == value:
            out.append(tokenizer.decode([i for i, _ in group]))
    return out


def test_end_of_turn_token_of_each_template(template):
    name, tokenizer = template
    assert end_of_turn_tokens(tokenizer) == (END_OF_TURN[name],)


@pytest.mark.parametrize("messages", [MULTI_TURN, *SAMPLE_CONVERSATIONS])
def test_mask_is_exactly_the_assistant_text_and_end_of_turn(template, messages):
    name, tokenizer = template
    out = tokenize_conversation(tokenizer, messages, seq_length=10_000)
    assert out["status"] == OK
    rendered_reply = RENDERED_REPLY[name]
    expected = [
        rendered_reply(m["content"]) + END_OF_TURN[name]
        for m in messages
        if m["role"] == "assistant"
    ]
    assert runs(tokenizer, out["input_ids"], out["loss_mask"]) == expected
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert out["input_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("messages", [MULTI_TURN, *SAMPLE_CONVERSATIONS])
def test_mask_is_what_the_verifier_generates_after_each_prompt(tokenizer, messages):
    """Independently of the character spans: the supervised tokens of reply k are the tokens
    after the generation prompt of messages[:k], up to and including the first eos token."""
    messages = [{**m, "content": m["content"].strip()} for m in messages]
    out = tokenize_conversation(tokenizer, messages, seq_length=10_000)
    ids = out["input_ids"]
    expected = [0] * len(ids)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(
            messages[:k], tokenize=False, add_generation_prompt=True
        )
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        stop = ids.index(tokenizer.eos_token_id, start)
        expected[start : stop + 1] = [1] * (stop + 1 - start)
    assert out["loss_mask"] == expected


def test_same_words_in_a_user_turn_are_not_masked(template):
    name, tokenizer = template
    out = tokenize_conversation(tokenizer, MULTI_TURN[:3], seq_length=10_000)
    masked = runs(tokenizer, out["input_ids"], out["loss_mask"])
    assert masked == ["hello" + END_OF_TURN[name]]
    unmasked = "".join(runs(tokenizer, out["input_ids"], out["loss_mask"], value=0))
    assert "Say hello" in unmasked


def test_no_end_of_turn_token_masks_the_text_only(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    )
    assert end_of_turn_tokens(tokenizer) == ()
    out = tokenize_conversation(tokenizer, SAMPLE_CONVERSATIONS[0], seq_length=10_000)
    masked = runs(tokenizer, out["input_ids"], out["loss_mask"])
    assert masked == ["Paris is the capital of France."]


SMOLLM2_LIKE = (  # SmolLM2's template: a default system prompt when none is given
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant named Fox<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
)


def test_assistant_first_with_a_default_system_prompt(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = SMOLLM2_LIKE
    messages = [
        {"role": "assistant", "content": "Fox"},  # also in the default system prompt
        {"role": "user", "content": "a helpful assistant"},
        {"role": "assistant", "content": "a helpful assistant"},  # also in the user turn
    ]
    out = tokenize_conversation(tokenizer, messages, seq_length=10_000)
    masked = runs(tokenizer, out["input_ids"], out["loss_mask"])
    assert masked == ["Fox<|im_end|>", "a helpful assistant<|im_end|>"]
    unmasked = "".join(runs(tokenizer, out["input_ids"], out["loss_mask"], value=0))
    assert "named Fox<|im_end|>" in unmasked and "user\na helpful assistant" in unmasked


@pytest.mark.parametrize("seq_length", [5, 20, 37, 60])
def test_truncation_keeps_masks_aligned(tokenizer, seq_length):
    full = tokenize_conversation(tokenizer, MULTI_TURN, seq_length=10_000)
    cut = tokenize_conversation(tokenizer, MULTI_TURN, seq_length=seq_length)
    assert len(cut["input_ids"]) == len(cut["loss_mask"]) == min(seq_length, len(full["input_ids"]))
    assert cut["input_ids"] == full["input_ids"][:seq_length]
    full_runs = runs(tokenizer, full["input_ids"], full["loss_mask"])
    masked = runs(tokenizer, cut["input_ids"], cut["loss_mask"])
    for got, want in zip(masked, full_runs):
        assert want.startswith(got)  # the last run may be cut short, never shifted
    assert cut["status"] == (OK if masked else NO_SUPERVISED)


def test_statuses(tokenizer):
    no_assistant = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]
    assert tokenize_conversation(tokenizer, no_assistant, 100)["status"] == NO_ASSISTANT
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    convo = SAMPLE_CONVERSATIONS[0]
    assert tokenize_conversation(tokenizer, convo, 100)["status"] == TEMPLATE_ERROR
