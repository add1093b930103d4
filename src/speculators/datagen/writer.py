"""Sample files written on background threads, so the verifier never waits for the disk."""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from speculators.artifacts.samples import save_sample
from speculators.datagen.backends.base import PendingCapture


def default_num_threads() -> int:
    """One per core, 2 to 16: a thread spends most of its time in write() and fsync(), which
    release the GIL, and concurrent fsyncs keep a fast disk's queue full."""
    return min(16, max(2, os.cpu_count() or 1))


@dataclass
class _Batch:
    """One launched batch, shared by the threads that write its samples."""

    paths: list[Path | None]  # None: a row computed again for its batch, already on disk
    samples: list[tuple[list[int], list[int]]]  # (input_ids, loss_mask) per row
    capture: PendingCapture
    remaining: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    states: list[list[torch.Tensor]] | None = None

    def hidden_states(self) -> list[list[torch.Tensor]]:
        with self.lock:  # the first thread waits for the copy; the others reuse its result
            if self.states is None:
                self.states = self.capture.wait()
            return self.states

    def finish_one(self) -> bool:
        with self.lock:
            self.remaining -= 1
            return self.remaining == 0


class SampleWriter:
    """Writes launched batches' samples on `num_threads` threads, one file per task.

    Memory stays bounded: at most `max_batches` batches are accepted and not yet fully written
    (their host buffers included); `put_batch` blocks while that many are pending. A batch's
    buffers are released once its last sample is on disk. The first error stops further
    writes (files already renamed into place are complete) and is raised on the next
    `put_batch` or on `close`; `failed_path` names the sample that failed.
    """

    def __init__(
        self, max_batches: int = 3, num_threads: int | None = None, hidden_dtype: str = "bf16"
    ) -> None:
        self.hidden_dtype = hidden_dtype  # how the files store hidden states: bf16 or fp8
        self.bytes_written = 0
        self.wait_seconds = 0.0  # time put_batch spent blocked on a full writer
        self.error: BaseException | None = None
        self.failed_path: Path | None = None
        self._slots = threading.Semaphore(max_batches)
        self._queue: queue.SimpleQueue[tuple[_Batch, int] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, name=f"datagen-writer-{i}", daemon=True)
            for i in range(num_threads or default_num_threads())
        ]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while (task := self._queue.get()) is not None:
            batch, row = task
            try:
                if self.error is None and batch.paths[row] is not None:
                    self._write(batch, row)
            except BaseException as e:  # re-raised on the main thread
                with self._lock:
                    if self.error is None:
                        self.error, self.failed_path = e, batch.paths[row]
            finally:
                if batch.finish_one():
                    batch.capture.release()
                    self._slots.release()

    def _write(self, batch: _Batch, row: int) -> None:
        path, (ids, mask) = batch.paths[row], batch.samples[row]
        assert path is not None
        hidden = batch.hidden_states()[row]
        save_sample(path, torch.tensor(ids), hidden, torch.tensor(mask), self.hidden_dtype)
        size = path.stat().st_size
        with self._lock:
            self.bytes_written += size

    def put_batch(
        self,
        paths: list[Path | None],
        samples: list[tuple[list[int], list[int]]],
        capture: PendingCapture,
    ) -> None:
        """Queue one batch: `paths[i]` gets `samples[i]` and row i of `capture` (a None path:
        row i is not written)."""
        assert len(paths) == len(samples) > 0
        self.raise_error()
        start = time.perf_counter()
        self._slots.acquire()
        self.wait_seconds += time.perf_counter() - start
        batch = _Batch(paths, samples, capture, remaining=len(paths))
        for row in range(len(paths)):
            self._queue.put((batch, row))

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self, raise_error: bool = True) -> None:
        """Write everything queued (unless an error stopped the writes), stop the threads."""
        if self.threads:
            for _ in self.threads:
                self._queue.put(None)
            for thread in self.threads:
                thread.join()
            self.threads = []
        if raise_error:
            self.raise_error()
