"""The draft's lm_head fused with its KL loss: logits exist for one chunk of positions at a time.

Per chunk: logits = x W^T (bf16 under autocast), the draft's log-probs, KL(verifier || draft)
and the argmax; and, when a gradient is wanted, d loss / d logits = w (q sum(p) - p) in bf16.
The gradients of x and W are then formed at once (two products over all positions) and the
backward only scales them by the incoming gradient. Per TTT step this keeps a few [chunk, Vd]
fp32 temporaries and one [N, Vd] bf16 gradient for a moment, instead of [N, Vd] fp32 logits,
log-probs and softmax saved until the backward; compiled, the element-wise work of a chunk is
one fused kernel. tests/unit/train/test_head_loss.py compares it with plain autograd.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

# Rows per chunk: about 256 MiB of fp32 logits (2048 rows at a 32k draft vocab).
_CHUNK_BYTES = 2**28


def _chunk_stats(
    logits_CV: torch.Tensor,
    target_logp_CV: torch.Tensor,
    weight_C: torch.Tensor,
    grad_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(KL per row, draft argmax per row, weighted d KL / d logits in `grad_dtype`) of one
    chunk; the arithmetic in fp32."""
    logits = logits_CV.float()
    logq = torch.log_softmax(logits, dim=-1)
    p = target_logp_CV.exp()
    kl = torch.where(p > 0, p * (target_logp_CV - logq), 0.0).sum(-1)
    grad = (logq.exp() * p.sum(-1, keepdim=True) - p) * weight_C[:, None]
    return kl, logits.argmax(-1), grad.to(grad_dtype)


@lru_cache(maxsize=1)
def _compiled_chunk_stats() -> Any:
    return torch.compile(_chunk_stats)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _LinearKL(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x_NH: torch.Tensor,
        weight_VH: torch.Tensor,
        target_logp_NV: torch.Tensor,
        target_argmax_N: torch.Tensor,
        weight_N: torch.Tensor,
        d2t_V: torch.Tensor,
        want_grad: bool,
        compiled: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, v = target_logp_NV.shape
        dtype = _compute_dtype(x_NH)
        w, x_all = weight_VH.to(dtype), x_NH.to(dtype)
        stats = _compiled_chunk_stats() if compiled else _chunk_stats
        chunk = max(1, _CHUNK_BYTES // (4 * v))
        kl_N = torch.empty(n, dtype=torch.float32, device=x_NH.device)
        argmax_N = torch.empty(n, dtype=torch.long, device=x_NH.device)
        grad_NV = torch.empty((n, v), dtype=dtype, device=x_NH.device) if want_grad else None
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            kl, argmax, grad = stats(x_all[a:b] @ w.T, target_logp_NV[a:b], weight_N[a:b], dtype)
            kl_N[a:b], argmax_N[a:b] = kl, argmax
            if grad_NV is not None:
                grad_NV[a:b] = grad
        loss = (kl_N * weight_N).sum()
        # The gradients as two full-size products (as autograd would form them from logits),
        # while only their bf16 d loss / d logits is held, for the moment it takes.
        ctx.grads = (grad_NV @ w, grad_NV.T @ x_all) if grad_NV is not None else (None, None)
        correct_N = (argmax_N + d2t_V[argmax_N]) == target_argmax_N
        ctx.dtypes = (x_NH.dtype, weight_VH.dtype)
        ctx.mark_non_differentiable(kl_N, correct_N)
        return loss, kl_N, correct_N

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        grad_x, grad_w = ctx.grads
        if grad_x is None or grad_w is None:
            raise RuntimeError("linear_kl was called without a gradient; call it with one")
        gx = (grad_x * grad_loss).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_loss).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        ctx.grads = (None, None)
        return gx, gw, None, None, None, None, None, None


def linear_kl(
    x_NH: torch.Tensor,
    weight_VH: torch.Tensor,
    target_logp_NV: torch.Tensor,
    target_argmax_N: torch.Tensor,
    weight_N: torch.Tensor,
    d2t_V: torch.Tensor,
    compiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum_i weight_i KL_i, KL per position, whether the draft's argmax is the verifier's).

    x: the normalised draft hidden states [..., H]; weight: the draft lm_head [Vd, H];
    target_logp: the verifier's log-probs over the draft vocab [N, Vd]; target_argmax: its
    argmax over the full vocab [N]; d2t: draft id -> target id offset. Differentiable in x and W.
    `compiled`: run the per-chunk element-wise work as one torch.compile'd kernel.
    """
    x = x_NH.reshape(-1, x_NH.shape[-1])
    want_grad = torch.is_grad_enabled() and (x.requires_grad or weight_VH.requires_grad)
    loss, kl, correct = _LinearKL.apply(
        x, weight_VH, target_logp_NV, target_argmax_N, weight_N.float(), d2t_V, want_grad, compiled
    )
    return loss, kl, correct
