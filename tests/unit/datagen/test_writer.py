"""Background sample writes: every queued sample lands whole, memory stays bounded, a failed
write is not swallowed and stops the writes after it."""

from __future__ import annotations

import threading

import pytest
import torch

from speculators.artifacts.samples import load_sample
from speculators.datagen.backends.base import ReadyCapture
from speculators.datagen.writer import SampleWriter
from speculators.errors import UserInputError


class Capture(ReadyCapture):
    """A finished capture that records its release."""

    released = 0

    def release(self) -> None:
        Capture.released += 1


def batch(tmp_path, first, lengths):
    paths = [tmp_path / f"data_{first + j}.pt" for j in range(len(lengths))]
    samples = [(list(range(n)), [1] * n) for n in lengths]
    states = [[torch.randn(n, 4), torch.randn(n, 4)] for n in lengths]
    return paths, samples, Capture(states)


def test_all_samples_written_counted_and_released(tmp_path):
    Capture.released = 0
    writer = SampleWriter(max_batches=1, num_threads=3)
    expected = {}
    for b in range(4):
        paths, samples, capture = batch(tmp_path, 2 * b, [b + 1, b + 2])
        expected.update({p: (s, h) for p, s, h in zip(paths, samples, capture.states)})
        writer.put_batch(paths, samples, capture)
    writer.close()
    assert Capture.released == 4
    assert writer.bytes_written == sum(p.stat().st_size for p in expected)
    for path, ((ids, mask), hidden) in expected.items():
        s = load_sample(path)
        assert s.input_ids.tolist() == ids and s.loss_mask.tolist() == mask
        assert torch.equal(s.last_hidden_state, hidden[1].to(torch.bfloat16))


def test_put_blocks_while_the_writer_holds_its_maximum(tmp_path):
    gate = threading.Event()

    class Slow(ReadyCapture):
        def wait(self):
            gate.wait()
            return self.states

    writer = SampleWriter(max_batches=1, num_threads=2)
    paths, samples, capture = batch(tmp_path, 0, [3])
    writer.put_batch(paths, samples, Slow(capture.states))
    second = threading.Thread(target=writer.put_batch, args=batch(tmp_path, 1, [2]))
    second.start()
    second.join(timeout=0.3)
    assert second.is_alive()  # the first batch is not written yet: no room for a second
    gate.set()
    second.join(timeout=10)
    writer.close()
    assert not second.is_alive() and (tmp_path / "data_1.pt").is_file()


def test_a_failed_write_is_raised_and_names_the_file(tmp_path):
    (tmp_path / "data_1.pt").mkdir()  # the rename onto it fails
    writer = SampleWriter(max_batches=2, num_threads=1)
    writer.put_batch(*batch(tmp_path, 0, [3, 4, 5]))
    with pytest.raises(UserInputError, match=r"cannot write .*data_1\.pt"):
        writer.close()
    assert writer.failed_path == tmp_path / "data_1.pt"
    assert load_sample(tmp_path / "data_0.pt").input_ids.tolist() == [0, 1, 2]
    assert not (tmp_path / "data_2.pt").exists()  # writes stop at the first error
    assert not list(tmp_path.glob(".tmp-*"))
