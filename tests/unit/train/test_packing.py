"""Packing documents into rows: first-fit (the default) and next-fit, pinned against rows worked
out by hand and against the invariants every packing keeps."""

from __future__ import annotations

import random

from speculators.train.packing import pack


def test_first_fit_fills_earlier_rows_and_next_fit_does_not():
    """Worked by hand, rows of 100: 60 opens row A; 50 does not fit A (110), opens B; 30 fills A
    to 90; 40 does not fit A (130), goes to B (90); 10 fills A to 100, which closes first."""
    lengths = [60, 50, 30, 40, 10]
    assert pack([0, 1, 2, 3, 4], lengths, 100) == [[0, 2, 4], [1, 3]]
    assert pack([0, 1, 2, 3, 4], lengths, 100, "next-fit") == [[0], [1, 2], [3, 4]]
    # longer than a row: truncated to it, a row of its own
    assert pack([0, 1], [250, 30], 100) == [[0], [1]]


def test_first_fit_keeps_at_most_16_rows_open():
    """18 documents of 60 each open a row (no two fit in 100); the 17th and 18th close the
    oldest, so a later 40 lands in the oldest row still open (document 2's), not document 0's."""
    lengths = [60] * 18 + [40]
    rows = pack(list(range(19)), lengths, 100)
    assert rows[:2] == [[0], [1]] and [2, 18] in rows
    assert sorted(i for row in rows for i in row) == list(range(19))


def test_packings_place_every_document_once_in_order_within_rows():
    rng = random.Random(0)
    lengths = [min(2048, max(16, int(rng.lognormvariate(6.0, 0.8)))) for _ in range(3000)]
    order = list(range(3000))
    rng.shuffle(order)
    position = {i: k for k, i in enumerate(order)}
    counts = {}
    for packing in ("first-fit", "next-fit"):
        rows = pack(order, lengths, 8192, packing)
        assert sorted(i for row in rows for i in row) == list(range(3000))
        assert all(sum(lengths[i] for i in row) <= 8192 for row in rows)
        assert all(row == sorted(row, key=position.get) for row in rows)
        counts[packing] = len(rows)
    total = sum(lengths)
    assert total / (counts["first-fit"] * 8192) > 0.99  # ~0.997
    assert total / (counts["next-fit"] * 8192) < 0.96  # ~0.945
