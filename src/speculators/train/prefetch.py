"""Batches copied to the GPU one step ahead, on a side stream, while the current step computes.

A packed 8192-token row of an 8B verifier carries ~270 MB of hidden states; copied when the step
starts, that is ~10 ms of an otherwise idle GPU per step. Here batch i+1's (pinned) tensors are
queued on a copy stream before batch i is handed out, and the compute stream waits for that copy
only when it reaches batch i+1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

Batch = dict[str, Any]


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if "error" in batch:  # the loader's report of a bad file: the trainer raises it
        return batch
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def prefetch_to_device(
    batches: Iterable[Batch | list[Batch]], device: torch.device
) -> Iterator[Batch | list[Batch]]:
    """Yield `batches` (each a batch or a list of micro-batches) with tensors on `device`;
    on CUDA the copy of the next one overlaps the current one's step. Elsewhere: as given."""
    if device.type != "cuda":
        yield from batches
        return
    stream = torch.cuda.Stream(device)

    def start(item: Batch | list[Batch]) -> tuple[Any, torch.cuda.Event]:
        stream.wait_stream(torch.cuda.current_stream(device))  # buffers freed by the step
        with torch.cuda.stream(stream):
            moved = (
                [_to_device(b, device) for b in item]
                if isinstance(item, list)
                else _to_device(item, device)
            )
            done = torch.cuda.Event()
            done.record(stream)
        return moved, done

    def finish(moved: Any, done: torch.cuda.Event) -> Any:
        compute = torch.cuda.current_stream(device)
        compute.wait_event(done)
        for b in moved if isinstance(moved, list) else [moved]:
            for v in b.values():
                if isinstance(v, torch.Tensor) and v.is_cuda:
                    v.record_stream(compute)  # freed only after the compute stream used it
        return moved

    it = iter(batches)
    pending = next(it, None)
    ahead = start(pending) if pending is not None else None
    while ahead is not None:
        nxt = next(it, None)
        following = start(nxt) if nxt is not None else None
        yield finish(*ahead)
        ahead = following
