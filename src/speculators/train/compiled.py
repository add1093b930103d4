"""torch.compile for the draft's training: the element-wise work around each matrix product
(RMSNorms, rotary, SiLU, residual adds) fused into a few kernels, forward and backward.

Each decoder layer is compiled in its pure pieces around the context calls (attention keeps
per-batch state and runs its own compiled flex kernel): the first layer's token projections, the
parts before and after attention; plus the final norm. The compiled
functions are instance attributes, so parameter names, state dicts and checkpoints are those of
the eager model, and sharding wrappers see the same modules.
"""

from __future__ import annotations

import torch

from speculators.models.eagle3 import Eagle3Draft


def compile_draft(model: Eagle3Draft, backend: str = "inductor") -> None:
    for layer in model.layers:
        names = ("token_qkv",) if layer.fused_input else ()
        for name in (*names, "before_attention", "after_attention"):
            setattr(layer, name, torch.compile(getattr(layer, name), backend=backend))
    model.norm.forward = torch.compile(model.norm.forward, backend=backend)  # type: ignore[method-assign]
