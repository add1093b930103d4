"""Loss masks: 1 exactly on assistant text, for ChatML and Llama-3 templates, with truncation."""

from __future__ import annotations

import itertools

import pytest

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


@pytest.fixture(params=["chatml", "llama3"])
def tokenizer(request):
    from transformers import AutoTokenizer

    # The fixtures' tokenizers: a real byte-level BPE with a ChatML / Llama-3 chat template.
    return AutoTokenizer.from_pretrained(
        request.getfixturevalue("tiny_llama" if request.param == "chatml" else "tiny_llama3")
    )


def runs(tokenizer, ids, mask, value=1):
    """Decoded maximal runs of tokens whose mask equals `value`."""
    out = []
    for on, group in itertools.groupby(zip(ids, mask), key=lambda x: x[1]):
        if on == value:
            out.append(tokenizer.decode([i for i, _ in group]))
    return out


@pytest.mark.parametrize("messages", [MULTI_TURN, *SAMPLE_CONVERSATIONS])
def test_mask_is_exactly_the_assistant_text(tokenizer, messages):
    out = tokenize_conversation(tokenizer, messages, seq_length=10_000)
    assert out["status"] == OK
    expected = [m["content"].strip() for m in messages if m["role"] == "assistant"]
    assert runs(tokenizer, out["input_ids"], out["loss_mask"]) == expected
    # Everything unmasked is template and prompt text: it decodes to the rendering of the same
    # conversation with the assistant text (not its surrounding whitespace) taken out.
    blanked = [
        {**m, "content": m["content"].replace(m["content"].strip(), "")}
        if m["role"] == "assistant"
        else m
        for m in messages
    ]
    unmasked = "".join(runs(tokenizer, out["input_ids"], out["loss_mask"], value=0))
    assert unmasked == tokenizer.apply_chat_template(blanked, tokenize=False)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert out["input_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_same_words_in_a_user_turn_are_not_masked(tokenizer):
    out = tokenize_conversation(tokenizer, MULTI_TURN[:3], seq_length=10_000)
    masked = runs(tokenizer, out["input_ids"], out["loss_mask"])
    assert masked == ["hello"]
    unmasked = "".join(runs(tokenizer, out["input_ids"], out["loss_mask"], value=0))
    assert "Say hello" in unmasked


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
    assert runs(tokenizer, out["input_ids"], out["loss_mask"]) == ["Fox", "a helpful assistant"]
    unmasked = "".join(runs(tokenizer, out["input_ids"], out["loss_mask"], value=0))
    assert "named Fox<|im_end|>" in unmasked and "user\na helpful assistant" in unmasked


@pytest.mark.parametrize("seq_length", [5, 20, 37, 60])
def test_truncation_keeps_masks_aligned(tokenizer, seq_length):
    full = tokenize_conversation(tokenizer, MULTI_TURN, seq_length=10_000)
    cut = tokenize_conversation(tokenizer, MULTI_TURN, seq_length=seq_length)
    assert len(cut["input_ids"]) == len(cut["loss_mask"]) == min(seq_length, len(full["input_ids"]))
    assert cut["input_ids"] == full["input_ids"][:seq_length]
    expected = [m["content"].strip() for m in MULTI_TURN if m["role"] == "assistant"]
    masked = runs(tokenizer, cut["input_ids"], cut["loss_mask"])
    for got, want in zip(masked, expected):
        assert want.startswith(got)  # the last run may be cut short, never shifted
    assert cut["status"] == (OK if masked else NO_SUPERVISED)


def test_statuses(tokenizer):
    no_assistant = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]
    assert tokenize_conversation(tokenizer, no_assistant, 100)["status"] == NO_ASSISTANT
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    convo = SAMPLE_CONVERSATIONS[0]
    assert tokenize_conversation(tokenizer, convo, 100)["status"] == TEMPLATE_ERROR
