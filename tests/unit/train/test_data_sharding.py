"""Sharding an epoch's packed rows over ranks: same steps everywhere, balanced, nothing twice."""

from __future__ import annotations

from speculators.train.packing import rank_rows


def test_rows_are_shared_evenly_and_balanced():
    lengths = [100, 10, 90, 20, 80, 30, 70]
    rows = [[i] for i in range(7)]  # one document per row
    shares = [rank_rows(rows, lengths, 4, 2, r) for r in (0, 1)]
    assert [len(m) for m, _ in shares] == [4, 4]  # 2 steps of 2 rows each, on both ranks
    real = sorted(i for m, pad in shares for k, row in enumerate(m) if k not in pad for i in row)
    assert real == list(range(7))  # every row once; the one filler row is padding
    assert sum(len(pad) for _, pad in shares) == 1
    # step 0 holds rows 0-3 (100, 10, 90, 20): dealt longest first in snake order, rank 0 gets
    # 100 + 10 and rank 1 gets 90 + 20 (plain round robin would give 120 and 100)
    step0 = [sum(lengths[i] for row in m[:2] for i in row) for m, _ in shares]
    assert step0 == [110, 110]
    one, _ = rank_rows(rows, lengths, 4, 1, 0)
    assert sorted(map(tuple, one[:4])) == sorted(map(tuple, shares[0][0][:2] + shares[1][0][:2]))
    assert len(rank_rows(rows, lengths, 2, 2, 0, max_steps=2)[0]) == 2
