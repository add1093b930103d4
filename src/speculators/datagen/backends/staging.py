"""Host staging of captured hidden states: reused (on CUDA page-locked) buffers, filled by an
asynchronous device-to-host copy on a side stream, handed out as one tensor per sample and layer.

The copy of batch i runs on the copy engine while the GPU computes batch i+1; whoever calls
`wait()` (a writer thread, not the thread launching forwards) blocks until it has landed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch


class StagingPool:
    """Flat host buffers to copy batches into, reused once their samples are written.

    A buffer is taken per batch and given back by `StagedCapture.release()`. Batches arrive
    longest first, so the first few buffers are the largest and later batches fit in them: in a
    run the pool allocates about as many buffers as batches are in flight, then only reuses.
    Page-locked (pinned) only when the device is CUDA: that is what makes the copy asynchronous.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> None:
        self.pin = device.type == "cuda"
        self.dtype = dtype
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self, numel: int) -> torch.Tensor:
        with self._lock:
            by_size = sorted(range(len(self._free)), key=lambda i: self._free[i].numel())
            fits = [i for i in by_size if self._free[i].numel() >= numel]
            if fits:
                return self._free.pop(fits[0])
            if self._free:  # none fits: drop the smallest so the pool does not grow without end
                self._free.pop(by_size[0])
        return torch.empty(numel, dtype=self.dtype, pin_memory=self.pin)

    def give(self, buffer: torch.Tensor) -> None:
        with self._lock:
            self._free.append(buffer)


def own_storage_rows(flat: torch.Tensor, start: int, num_rows: int) -> torch.Tensor:
    """Rows [start, start + num_rows) of a contiguous 2-D tensor as a tensor whose storage is
    exactly those bytes (a storage slice: no copy). torch.save writes a tensor's whole storage,
    so this lets a sample be saved straight from the shared buffer."""
    width, size = flat.shape[1], flat.element_size()
    begin = (flat.storage_offset() + start * width) * size
    storage = flat.untyped_storage()[begin : begin + num_rows * width * size]
    return torch.empty(0, dtype=flat.dtype).set_(storage, 0, (num_rows, width), (width, 1))


class StagedCapture:
    """A batch's hidden states on their way to (or already in) host memory.

    Layout: sample-major, `[sum over samples of num_layers * L_i, H]`, each sample's layers one
    after the other. The tensors `wait()` returns are views of the pool's buffer: valid until
    `release()`, which hands the buffer back for the next batch.
    """

    def __init__(
        self,
        host: torch.Tensor,
        lengths: list[int],
        num_layers: int,
        done: torch.cuda.Event | None,
        give_back: Callable[[], None] | None,
    ) -> None:
        self._host, self._lengths, self._num_layers = host, lengths, num_layers
        self._done = done
        self._give_back = give_back

    def wait(self) -> list[list[torch.Tensor]]:
        if self._done is not None:
            self._done.synchronize()  # releases the GIL while the copy finishes
        out, row = [], 0
        for n in self._lengths:
            layers = []
            for _ in range(self._num_layers):
                layers.append(own_storage_rows(self._host, row, n))
                row += n
            out.append(layers)
        return out

    def release(self) -> None:
        if self._give_back is not None:
            give_back, self._give_back = self._give_back, None
            give_back()


def stage(
    pool: StagingPool,
    packed: torch.Tensor,
    lengths: list[int],
    num_layers: int,
    copy_stream: torch.cuda.Stream | None,
) -> StagedCapture:
    """Start copying `packed` (sample-major rows, see StagedCapture) into a pool buffer and
    return at once. On CUDA the copy is queued on `copy_stream` after the work that produced
    `packed`; the CPU does not wait for it. On the CPU the copy is done before returning."""
    buffer = pool.take(packed.numel())
    host = buffer[: packed.numel()].view(packed.shape)
    done = None
    if copy_stream is not None:
        copy_stream.wait_stream(torch.cuda.current_stream(packed.device))
        with torch.cuda.stream(copy_stream):
            host.copy_(packed, non_blocking=True)
            done = torch.cuda.Event()
            done.record(copy_stream)
        # `packed` is freed when the caller drops it; keep the allocator from reusing its
        # memory for the next forward before this stream has read it.
        packed.record_stream(copy_stream)
    else:
        host.copy_(packed)
    return StagedCapture(host, lengths, num_layers, done, lambda: pool.give(buffer))
