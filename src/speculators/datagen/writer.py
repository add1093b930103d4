"""Sample files written on background threads, so the verifier never waits for the disk."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

from speculators.artifacts.samples import save_sample


class SampleWriter:
    """Saves samples on background threads (several: each file is fsynced, and one thread
    cannot keep up with a GPU); a bounded queue keeps memory flat."""

    def __init__(self, max_pending: int, num_threads: int = min(4, os.cpu_count() or 1)):
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self.bytes_written = 0
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, name=f"datagen-writer-{i}", daemon=True)
            for i in range(num_threads)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    path, *tensors = item
                    save_sample(path, *tensors)
                    with self._lock:
                        self.bytes_written += path.stat().st_size
                except BaseException as e:  # re-raised on the main thread
                    self.error = e

    def put(self, item: Any) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()
        if self.error is not None:
            raise self.error
