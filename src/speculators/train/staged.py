"""Numbers on the GPU copied to host memory as the stream reaches them, so that reading them
waits for the work queued before them only, not for everything queued since."""

from __future__ import annotations

import torch


class Staged:
    """A device tensor's values, on their way to the host (`tolist` waits for them alone)."""

    def __init__(self, values: torch.Tensor) -> None:
        self._event: torch.cuda.Event | None = None
        if values.is_cuda:
            self._host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self._host.copy_(values, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = values.detach()

    def tolist(self) -> list:
        if self._event is not None:
            self._event.synchronize()
        return self._host.tolist()
