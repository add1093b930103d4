"""Token counts -> the d2t / t2d draft vocabulary mapping (SPEC §2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speculators.artifacts.atomic import remove_stale_temps
from speculators.artifacts.output_paths import check_output_dir
from speculators.artifacts.token_freq import (
    TokenFreqMeta,
    load_token_freq,
    load_token_freq_meta,
    meta_path,
)
from speculators.artifacts.vocab_mapping import D2T_FILE, T2D_FILE, save_vocab_mapping
from speculators.config import VocabConfig
from speculators.errors import UserInputError


@dataclass
class VocabResult:
    d2t_path: Path
    t2d_path: Path
    draft_vocab_size: int
    target_vocab_size: int
    num_seen_ids: int
    num_padded_ids: int
    num_counted_tokens: int
    coverage: float  # share of counted tokens whose id is in the draft vocab
    notes: list[str] = field(default_factory=list)


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


def check_token_freq_record(
    config: VocabConfig, counts: dict[int, int], meta: TokenFreqMeta | None, vocab_size: int
) -> list[str]:
    """The counts were made with this verifier's tokenizer, as far as their record says; a
    file without a record is refused unless --allow-unrecorded-token-freq. Returns notes."""
    path = config.token_freq_path
    if meta is not None and meta.num_tokens != sum(counts.values()):
        # A sidecar beside a file it does not describe (the file was replaced or copied).
        meta, why = None, f"its sidecar {meta_path(path).name} describes other counts"
    else:
        why = "it was written by another tool, or its sidecar token_freq.pt.meta.json is missing"
    if meta is None:
        if not config.allow_unrecorded_token_freq:
            raise UserInputError(
                f"--token-freq-path {path} has no record of the tokenizer its counts came from "
                f"({why}), so it cannot be checked against the verifier. Recount with "
                "`speculators datagen`, or pass --allow-unrecorded-token-freq if you know it "
                "was counted with this verifier's tokenizer."
            )
        return [f"{path} has no record of its tokenizer; only its token ids were checked"]
    if meta.vocab_size != vocab_size:
        raise UserInputError(
            f"{path} was counted with a tokenizer of {meta.vocab_size} tokens "
            f"({meta.target_model_path}), but the target vocab is {vocab_size}. Use the "
            "token_freq.pt made from this verifier's data, or rerun `speculators datagen`."
        )
    if meta.tokenizer and config.target_model_path:
        from speculators.models.fingerprint import tokenizer_fingerprint_of

        mine = tokenizer_fingerprint_of(config.target_model_path, "--target-model-path")
        if mine and mine != meta.tokenizer:
            raise UserInputError(
                f"{path} was counted with the tokenizer of {meta.target_model_path}, whose token "
                f"ids differ from those of --target-model-path {config.target_model_path}. Use "
                "the token_freq.pt made from this verifier's data, or rerun `speculators "
                "datagen` with it."
            )
    return []


def check_earlier_outputs(config: VocabConfig, d2t: np.ndarray, t2d: np.ndarray) -> None:
    """A d2t.npy / t2d.npy already in --output-path is replaced only when it holds the same
    mapping (a rerun) or with --overwrite."""
    different = []
    for name, new in ((D2T_FILE, d2t), (T2D_FILE, t2d)):
        path = config.output_path / name
        if not path.exists():
            continue
        try:
            old = np.load(path, allow_pickle=False)
            same = old.dtype == new.dtype and old.shape == new.shape and bool((old == new).all())
        except (OSError, ValueError):
            same = False
        if not same:
            different.append(name)
    if different and not config.overwrite:
        raise UserInputError(
            f"--output-path {config.output_path} already holds {' and '.join(different)} with "
            "a different mapping. Pass another --output-path, or --overwrite to replace them."
        )


def run_vocab(config: VocabConfig) -> VocabResult:
    """Read token_freq.pt, choose the draft vocab, write d2t.npy and t2d.npy."""
    check_output_dir(config.output_path, "--output-path")
    target_vocab_size = resolve_target_vocab_size(config)
    counts = load_token_freq(config.token_freq_path)
    meta = load_token_freq_meta(config.token_freq_path)
    notes = check_token_freq_record(config, counts, meta, target_vocab_size)
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
    check_earlier_outputs(config, d2t, t2d)
    remove_stale_temps(config.output_path, lambda name: name in (D2T_FILE, T2D_FILE))
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
        coverage=covered / total,
        notes=notes,
    )
