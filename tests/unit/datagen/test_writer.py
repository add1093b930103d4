"""Background sample writes: every queued sample lands whole; a failed write is not swallowed."""

from __future__ import annotations

import pytest
import torch

from speculators.artifacts.samples import load_sample
from speculators.datagen.writer import SampleWriter


def item(path, n):
    ids = torch.arange(n)
    return (path, ids, [torch.randn(n, 4), torch.randn(n, 4)], torch.ones(n, dtype=torch.long))


def test_all_samples_written_and_counted(tmp_path):
    writer = SampleWriter(max_pending=2, num_threads=3)
    for i in range(7):
        writer.put(item(tmp_path / f"data_{i}.pt", i + 1))
    writer.close()
    sizes = sum((tmp_path / f"data_{i}.pt").stat().st_size for i in range(7))
    assert writer.bytes_written == sizes
    assert [load_sample(tmp_path / f"data_{i}.pt").input_ids.tolist() for i in (0, 6)] == [
        [0],
        list(range(7)),
    ]


def test_a_failed_write_is_raised_on_close(tmp_path):
    (tmp_path / "not-a-dir").write_text("x")
    writer = SampleWriter(max_pending=2, num_threads=2)
    writer.put(item(tmp_path / "not-a-dir" / "data_0.pt", 3))
    with pytest.raises(OSError):
        writer.close()
