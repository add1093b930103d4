"""Training-time-test attention: who sees what, and dense == flex."""

from __future__ import annotations

import pytest
import torch

from speculators.train.attention import TTTAttention

DOCS = [0] * 6 + [1] * 5 + [2] * 3 + [-1] * 2  # three packed documents, then padding
T = len(DOCS)


def allowed_keys(i: int, step: int) -> set[tuple[int, int]]:
    """Brute force from the rule in words: step s at row i sees (step 0, j) for every earlier or
    equal j of the same document, and (t, i) for its own row at every step 1..s."""
    seen = {(0, j) for j in range(T) if DOCS[j] == DOCS[i] and j <= i}
    return seen | {(t, i) for t in range(1, step + 1)}


def visible_sets(impl: str, steps: int) -> list[list[set[tuple[int, int]]]]:
    """Measure what each query attends to: zero queries give uniform weights over the visible
    keys, and one-hot values (one per (step, row) key) reveal which keys those are."""
    ctx = TTTAttention(torch.tensor([DOCS]), impl)
    dim = steps * T
    out = []
    for s in range(steps):
        q = torch.zeros(1, 2, T, dim)
        k = torch.randn(1, 1, T, dim)
        v = torch.eye(dim)[s * T : (s + 1) * T][None, None]
        weights = ctx.attend(0, q, k, v)[0, 0]  # [T, dim]
        out.append([{divmod(int(c), T) for c in torch.nonzero(row > 1e-6)} for row in weights])
    return out


@pytest.mark.parametrize("impl", ["dense", "flex"])
def test_each_query_sees_exactly_its_causal_document_prefix_and_own_earlier_steps(impl):
    steps = 3
    seen = visible_sets(impl, steps)
    for s in range(steps):
        for i in range(T):
            assert seen[s][i] == allowed_keys(i, s), (impl, s, i)


def test_flex_and_dense_give_the_same_numbers():
    torch.manual_seed(0)
    doc = torch.tensor([DOCS, [0] * 10 + [1] * 6])
    dense, flex = TTTAttention(doc, "dense"), TTTAttention(doc, "flex")
    for _ in range(3):
        q, k, v = torch.randn(2, 4, T, 8), torch.randn(2, 2, T, 8), torch.randn(2, 2, T, 8)
        for layer in (0, 1):
            torch.testing.assert_close(
                dense.attend(layer, q, k, v), flex.attend(layer, q, k, v), atol=1e-5, rtol=1e-5
            )
