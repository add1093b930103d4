"""bf16 copies of the draft's trainable fp32 parameters, made once per micro-batch (one GPU).

Under autocast an fp32 weight is cast at every use, and inside each torch.compile'd piece on
every call: a layer that training-time test runs 3 times per step was cast 3 times, and its 3
fp32 weight gradients were cast and added into `.grad` one pass each (~26 bytes of memory traffic
per parameter per TTT step). Here each trainable parameter gets one bf16 copy per micro-batch, a
leaf swapped into its module for the forward and backward: the TTT steps share it, their
gradients add up on it in bf16, and the sum reaches the fp32 parameter's `.grad` in one pass.

This is what FSDP2's bf16 mixed precision does with several GPUs (train/distributed.py): there
the unsharded bf16 parameter collects the steps' gradients, and the fp32 shard gets their sum.
The draft's residual stream is then bf16 too (its norms' weights are bf16), on one GPU as on
several. The optimizer, clipping and checkpoints only ever see the fp32 parameters.
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn


class ComputeCopies:
    """`with copies:` swaps a fresh `dtype` copy in for each trainable parameter of another
    dtype (and back on exit, whatever happens); after the backward, `collect_grads()` adds the
    copies' gradients to the parameters' `.grad` (fp32)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._slots = [
            (module, name, p)
            for module in model.modules()
            for name, p in module.named_parameters(recurse=False)
            if p.requires_grad and p.dtype != dtype
        ]
        self._copies: list[nn.Parameter] = []

    def __enter__(self) -> ComputeCopies:
        self._copies = []
        for module, name, p in self._slots:
            copy = nn.Parameter(p.detach().to(self.dtype))
            setattr(module, name, copy)
            self._copies.append(copy)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for module, name, p in self._slots:
            setattr(module, name, p)

    @torch.no_grad()
    def collect_grads(self) -> None:
        for (_, _, p), copy in zip(self._slots, self._copies):
            if copy.grad is None:
                continue
            if p.grad is None:
                p.grad = copy.grad.to(p.dtype)
            else:
                p.grad.add_(copy.grad)
        self._copies = []
