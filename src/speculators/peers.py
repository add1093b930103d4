"""What a torchrun worker can tell about the others: whether a collective failed because another
worker exited (its own error is already printed; this one should stop without a traceback)."""

from __future__ import annotations

import torch.distributed as dist


def peer_failed(e: Exception) -> bool:
    """A collective failed because another worker exited (gloo: closed connection; NCCL:
    a DistError from the watchdog)."""
    text = str(e)
    return isinstance(e, dist.DistError) or any(
        m in text
        for m in ("Connection closed by peer", "Connection reset by peer", "remote worker")
    )
