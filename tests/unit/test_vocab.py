"""The vocab mapping (SPEC §2) against an independent, deliberately naive computation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from speculators.config import VocabConfig
from speculators.errors import UserInputError
from speculators.vocab import run_vocab


def naive_draft_ids(counts: dict[int, int], vd: int, v: int) -> list[int]:
    """Rank by hand: repeatedly take the highest count, smaller id on ties; then smallest unseen."""
    remaining = {i: c for i, c in counts.items() if c > 0}
    chosen: list[int] = []
    while remaining and len(chosen) < vd:
        best = min(remaining, key=lambda i: (-remaining[i], i))
        chosen.append(best)
        del remaining[best]
    i = 0
    while len(chosen) < vd:
        if i not in chosen:
            chosen.append(i)
        i += 1
    return sorted(chosen)


def run(tmp_path, counts, vd, v):
    freq = tmp_path / "token_freq.pt"
    torch.save(counts, freq)
    out = tmp_path / "vocab"
    run_vocab(
        VocabConfig(
            token_freq_path=freq,
            draft_vocab_size=vd,
            target_vocab_size=v,
            output_path=out,
            allow_unrecorded_token_freq=True,  # a plain dict, as the reference tools write
        )
    )
    return np.load(out / "d2t.npy"), np.load(out / "t2d.npy")


@pytest.mark.parametrize("seed", range(5))
def test_mapping_matches_naive_ranking(tmp_path, seed):
    rng = random.Random(seed)
    v = rng.randint(20, 200)
    vd = rng.randint(1, v)
    # small count range forces many ties
    counts = {rng.randrange(v): rng.randint(0, 5) for _ in range(rng.randint(0, 2 * v))}
    d2t, t2d = run(tmp_path, counts, vd, v)

    assert d2t.dtype == np.int64 and d2t.shape == (vd,)
    assert t2d.dtype == np.bool_ and t2d.shape == (v,)
    assert int(t2d.sum()) == vd
    target = [draft_id + int(d2t[draft_id]) for draft_id in range(vd)]
    assert target == naive_draft_ids(counts, vd, v)
    assert all(a < b for a, b in zip(target, target[1:]))  # strictly increasing
    assert [i for i in range(v) if t2d[i]] == target


def test_ties_prefer_smaller_id(tmp_path):
    d2t, _ = run(tmp_path, {9: 5, 4: 5, 7: 5, 1: 1}, vd=2, v=10)
    assert (np.arange(2) + d2t).tolist() == [4, 7]


def test_pads_with_smallest_unseen_ids(tmp_path):
    # seen: 5, 8 (id 0 has count 0, so it counts as unseen)
    d2t, t2d = run(tmp_path, {5: 3, 8: 1, 0: 0}, vd=5, v=10)
    assert (np.arange(5) + d2t).tolist() == [0, 1, 2, 5, 8]
    assert t2d.nonzero()[0].tolist() == [0, 1, 2, 5, 8]


def test_full_draft_vocab_is_identity(tmp_path):
    d2t, t2d = run(tmp_path, {3: 2, 1: 7}, vd=6, v=6)
    assert (d2t == 0).all() and t2d.all()


def test_id_outside_target_vocab_is_refused(tmp_path):
    with pytest.raises(UserInputError, match="outside the target vocab"):
        run(tmp_path, {3: 2, 12: 7}, vd=2, v=10)
    assert not (tmp_path / "vocab").exists()


def test_target_model_path_reads_vocab_size(tmp_path, tiny_llama):
    from transformers import AutoConfig

    freq = tmp_path / "token_freq.pt"
    torch.save({1: 3, 2: 1}, freq)
    result = run_vocab(
        VocabConfig(
            token_freq_path=freq,
            draft_vocab_size=8,
            target_model_path=str(tiny_llama),
            output_path=tmp_path / "o",
            allow_unrecorded_token_freq=True,
        )
    )
    assert result.target_vocab_size == AutoConfig.from_pretrained(tiny_llama).vocab_size
    assert np.load(tmp_path / "o" / "t2d.npy").shape == (result.target_vocab_size,)
    assert result.coverage == 1.0
