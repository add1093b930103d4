"""Token counts -> the d2t / t2d draft vocabulary mapping (SPEC §2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speculators.artifacts.token_freq import load_token_freq, load_token_freq_meta
from speculators.artifacts.vocab_mapping import save_vocab_mapping
from speculators.config import VocabConfig
from speculators.errors import UserInputError


@dataclass(frozen=True)
class VocabResult:
    d2t_path: Path
    t2d_path: Path
    draft_vocab_size: int
    target_vocab_size: int
    num_seen_ids: int
    num_padded_ids: int
    num_counted_tokens: int
    coverage: float  # share of counted tokens whose id is in the draft vocab


def select_draft_ids(counts: dict[int, int], draft_vocab_size: int, target_vocab_size: int):
    """The target ids of the draft vocab, ascending, and how many were padding.

    The `draft_vocab_size` most frequent ids (ties: smaller id first); if fewer ids were seen
    (count > 0), the smallest unseen ids fill the rest.
    """
    assert 0 < draft_vocab_size <= target_vocab_size
    seen = sorted((-c, i) for i, c in counts.items() if c > 0)
    chosen = np.array([i for _, i in seen[:draft_vocab_size]], dtype=np.int64)
    num_padded = draft_vocab_size - chosen.size
    if num_padded:
        unseen = np.setdiff1d(np.arange(target_vocab_size, dtype=np.int64), chosen)
        chosen = np.concatenate([chosen, unseen[:num_padded]])
    return np.sort(chosen), num_padded


def build_mapping(draft_ids: np.ndarray, target_vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """d2t offsets and the t2d mask for ascending target ids `draft_ids`."""
    d2t = draft_ids - np.arange(draft_ids.size, dtype=np.int64)
    t2d = np.zeros(target_vocab_size, dtype=np.bool_)
    t2d[draft_ids] = True
    return d2t, t2d


def resolve_target_vocab_size(config: VocabConfig) -> int:
    if config.target_vocab_size is not None:
        return config.target_vocab_size
    from speculators.models.verifier import load_verifier_config

    assert config.target_model_path is not None
    vocab_size = load_verifier_config(config.target_model_path, "--target-model-path").vocab_size
    if config.draft_vocab_size > vocab_size:
        raise UserInputError(
            f"--draft-vocab-size {config.draft_vocab_size} is larger than the vocab of "
            f"{config.target_model_path} ({vocab_size}); use at most {vocab_size}."
        )
    return int(vocab_size)


def run_vocab(config: VocabConfig) -> VocabResult:
    """Read token_freq.pt, choose the draft vocab, write d2t.npy and t2d.npy."""
    target_vocab_size = resolve_target_vocab_size(config)
    counts = load_token_freq(config.token_freq_path)
    meta = load_token_freq_meta(config.token_freq_path)
    if meta is not None and meta.vocab_size != target_vocab_size:
        raise UserInputError(
            f"{config.token_freq_path} was counted with a tokenizer of {meta.vocab_size} tokens "
            f"({meta.target_model_path}), but the target vocab is {target_vocab_size}. Use the "
            "token_freq.pt made from this verifier's data, or rerun `speculators datagen`."
        )
    too_big = [i for i in counts if i >= target_vocab_size]
    if too_big:
        raise UserInputError(
            f"{config.token_freq_path} counts token id {max(too_big)}, which is outside the target "
            f"vocab of {target_vocab_size} tokens ({len(too_big)} ids are). The file was made with "
            "another tokenizer: pass the verifier's vocab size, or recount with `speculators "
            "datagen` on this verifier."
        )
    draft_ids, num_padded = select_draft_ids(counts, config.draft_vocab_size, target_vocab_size)
    d2t, t2d = build_mapping(draft_ids, target_vocab_size)
    d2t_path, t2d_path = save_vocab_mapping(config.output_path, d2t, t2d)
    total = sum(counts.values())
    covered = sum(counts.get(int(i), 0) for i in draft_ids)
    return VocabResult(
        d2t_path=d2t_path,
        t2d_path=t2d_path,
        draft_vocab_size=config.draft_vocab_size,
        target_vocab_size=target_vocab_size,
        num_seen_ids=sum(1 for c in counts.values() if c > 0),
        num_padded_ids=num_padded,
        num_counted_tokens=total,
        coverage=covered / total if total else 0.0,
    )
