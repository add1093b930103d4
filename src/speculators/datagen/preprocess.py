"""Conversations -> token ids and a loss mask that is 1 exactly on the tokens the verifier writes.

The mask comes from character offsets, not from `{% generation %}` markers (most templates have
none): the conversation is rendered with the tokenizer's own chat template, each assistant
message is located in the rendered text (from where a marker put in its place appears, so the
same words in a user turn or a default system prompt never match), and every token whose
characters overlap an assistant span gets mask 1. A span runs on to the end-of-turn token the
template writes right after the reply (`<|im_end|>`, `<|eot_id|>`): the verifier generates it, so
the draft must predict it. Role headers, prompts and what follows the end-of-turn token get 0.
Results are cached by HF datasets under a fingerprint of tokenizer, data and settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speculators.chat_template import MARKER, end_of_turn_tokens
from speculators.errors import UserInputError
from speculators.sources import RawData, normalize_conversation

# Bump when tokenization or masking changes, so that old caches are not reused.
PREPROCESS_VERSION = "3"  # 3: end-of-turn tokens are supervised

OK, NO_ASSISTANT, TEMPLATE_ERROR, NO_SUPERVISED = 0, 1, 2, 3


def _content_start(tokenizer: Any, messages: list[dict[str, str]], k: int, text: str) -> int:
    """Where message k's content begins in `text`: the conversation is rendered again with that
    content replaced by a marker, and the text before the marker must be the same. 0 when the
    template does not treat content as opaque (then the search starts after the previous turn)."""
    probe = [*messages[:k], {**messages[k], "content": MARKER}, *messages[k + 1 :]]
    try:
        rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # a template may validate content; fall back to the plain search
        return 0
    idx = rendered.find(MARKER)
    return idx if idx >= 0 and text.startswith(rendered[:idx]) else 0


def assistant_char_spans(
    tokenizer: Any,
    messages: list[dict[str, str]],
    text: str,
    end_of_turn: tuple[str, ...] = (),
) -> list[tuple[int, int]]:
    """[start, end) character spans of the assistant messages' text within `text`, each running
    on through an `end_of_turn` token that directly follows it (after whitespace)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for k, message in enumerate(messages):
        target = message["content"].strip()  # templates often trim; whitespace is not text
        if message["role"] != "assistant" or not target:
            continue
        found = text.find(target, max(pos, _content_start(tokenizer, messages, k, text)))
        if found < 0:
            continue
        end = found + len(target)
        gap = len(text) - end - len(text[end:].lstrip())
        eot = next((t for t in end_of_turn if text.startswith(t, end + gap)), None)
        if eot is not None:
            end += gap + len(eot)
        spans.append((found, end))
        pos = end
    return spans


def token_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]], n_chars: int):
    """1 for tokens whose characters overlap a span. A token is taken to cover up to where the
    next one starts, so tokenizers that trim whitespace out of offsets lose no tokens."""
    starts = np.array([s for s, _ in offsets], dtype=np.int64)
    ends = np.maximum(np.array([e for _, e in offsets], dtype=np.int64), 0)
    if len(starts):
        ends = np.maximum(ends, np.append(starts[1:], n_chars))
    mask = np.zeros(len(starts), dtype=np.int64)
    for a, b in spans:
        mask |= (starts < b) & (ends > a)
    return mask


def tokenize_conversation(
    tokenizer: Any,
    messages: list[dict[str, str]],
    seq_length: int,
    end_of_turn: tuple[str, ...] | None = None,
):
    """{input_ids, loss_mask, status} for one normalized conversation, truncated to seq_length.
    `end_of_turn`: end_of_turn_tokens(tokenizer), passed in when tokenizing many."""
    if end_of_turn is None:
        end_of_turn = end_of_turn_tokens(tokenizer)
    empty = {"input_ids": [], "loss_mask": [], "status": NO_ASSISTANT}
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        return empty
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # e.g. "roles must alternate user/assistant"
        return {**empty, "status": TEMPLATE_ERROR}
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = assistant_char_spans(tokenizer, messages, text, end_of_turn)
    mask = token_mask(enc["offset_mapping"], spans, len(text))
    ids, mask = list(enc["input_ids"])[:seq_length], mask[:seq_length].tolist()
    return {"input_ids": ids, "loss_mask": mask, "status": OK if any(mask) else NO_SUPERVISED}


def check_tokenizer(tokenizer: Any, model_path: str) -> None:
    """What datagen needs beyond a chat template (models.verifier.load_chat_tokenizer checks
    that): character offsets for the loss mask."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserInputError(
            f"--target-model-path {model_path}: the tokenizer is a slow (Python) tokenizer; the "
            "loss mask needs character offsets, which only fast tokenizers give. Save the model "
            "with a tokenizer.json (a fast tokenizer)."
        )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = (
        backend.to_str()
        if backend is not None
        else json.dumps(sorted(tokenizer.get_vocab().items()))
    )
    parts = [
        vocab,
        str(tokenizer.chat_template),
        json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass
class TokenizedData:
    """Tokenized conversations; sample idx i is row `kept[i]` of `dataset`."""

    dataset: Any  # datasets.Dataset: input_ids, loss_mask, status, length
    kept: list[int]
    fingerprint: str
    num_no_assistant: int
    num_template_errors: int
    num_no_supervised: int

    @property
    def num_samples(self) -> int:
        return len(self.kept)

    def sample(self, idx: int) -> tuple[list[int], list[int]]:
        row = self.dataset[self.kept[idx]]
        return row["input_ids"], row["loss_mask"]

    def lengths(self) -> list[int]:
        lengths = np.asarray(self.dataset["length"], dtype=np.int64)
        return lengths[self.kept].tolist()


# Below this many conversations, starting worker processes costs more than it saves.
PARALLEL_MIN_ROWS = 2000


def _num_proc(num_rows: int) -> int | None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, cpus or 1) if num_rows >= PARALLEL_MIN_ROWS and (cpus or 1) > 1 else None


def default_cache_dir() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE)


def tokenize_dataset(
    raw: RawData,
    tokenizer: Any,
    seq_length: int,
    max_samples: int | None,
    seed: int,
    cache_dir: Path | None,
) -> TokenizedData:
    """Shuffle (seeded), take max_samples, tokenize and mask; cached under a fingerprint."""
    settings = [
        PREPROCESS_VERSION,
        raw.fingerprint,
        tokenizer_fingerprint(tokenizer),
        seq_length,
        max_samples,
        seed,
    ]
    fingerprint = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:32]
    order = np.random.default_rng(seed).permutation(len(raw.dataset))
    if max_samples is not None:
        order = order[:max_samples]
    selected = raw.dataset.select(order.tolist())
    column = raw.column
    end_of_turn = end_of_turn_tokens(tokenizer)

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        messages = normalize_conversation(row[column], f"--train-data-path, row with {column}")
        out = tokenize_conversation(tokenizer, messages, seq_length, end_of_turn)
        return {**out, "length": len(out["input_ids"])}

    cache_file = (
        (cache_dir or default_cache_dir())
        / "speculators-datagen"
        / f"tokenized-{fingerprint}.arrow"
    )
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    dataset = selected.map(
        encode,
        remove_columns=selected.column_names,
        new_fingerprint=fingerprint,
        cache_file_name=str(cache_file),
        desc="tokenizing conversations",
        num_proc=_num_proc(len(selected)),
    )
    status = np.asarray(dataset["status"], dtype=np.int64)
    return TokenizedData(
        dataset=dataset,
        kept=np.flatnonzero(status == OK).tolist(),
        fingerprint=fingerprint,
        num_no_assistant=int((status == NO_ASSISTANT).sum()),
        num_template_errors=int((status == TEMPLATE_ERROR).sum()),
        num_no_supervised=int((status == NO_SUPERVISED).sum()),
    )


def count_supervised_tokens(data: TokenizedData) -> dict[int, int]:
    """token id -> count over tokens with loss mask 1, across every kept sample."""
    counts = np.zeros(0, dtype=np.int64)
    kept = data.dataset.select(data.kept).with_format("numpy", columns=["input_ids", "loss_mask"])
    for batch in kept.iter(batch_size=512):
        for ids, mask in zip(batch["input_ids"], batch["loss_mask"]):
            found = np.bincount(np.asarray(ids)[np.asarray(mask) == 1])
            if len(found) > len(counts):
                counts = np.pad(counts, (0, len(found) - len(counts)))
            counts[: len(found)] += found
    return {int(i): int(counts[i]) for i in np.flatnonzero(counts)}
