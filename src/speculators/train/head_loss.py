"""The draft's lm_head fused with its KL loss: logits exist for one chunk of positions at a time.

Per chunk: logits = x W^T (bf16 under autocast), the draft's log-probs, KL(verifier || draft)
and the argmax; and, when a gradient is wanted, d loss / d logits = w (q sum(p) - p), from which
the gradients of x and W are formed on the spot. The backward only scales them by the incoming
gradient. Per TTT step this keeps a few [chunk, Vd] fp32 buffers instead of [N, Vd] logits,
log-probs and softmax saved for the backward, and it runs the element-wise work as one fused
kernel on GPUs. `loss.kl_and_correct` is the unfused reference the tests compare with.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

# Rows per chunk: about 256 MiB of fp32 logits (2048 rows at a 32k draft vocab).
_CHUNK_BYTES = 2**28


def _chunk_stats(
    logits_CV: torch.Tensor, target_logp_CV: torch.Tensor, weight_C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(KL per row, draft argmax per row, weighted d KL / d logits) of one chunk, in fp32."""
    logits = logits_CV.float()
    logq = torch.log_softmax(logits, dim=-1)
    p = target_logp_CV.exp()
    kl = torch.where(p > 0, p * (target_logp_CV - logq), 0.0).sum(-1)
    grad = (logq.exp() * p.sum(-1, keepdim=True) - p) * weight_C[:, None]
    return kl, logits.argmax(-1), grad


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
        w = weight_VH.to(dtype)
        stats = _compiled_chunk_stats() if compiled else _chunk_stats
        chunk = max(1, _CHUNK_BYTES // (4 * v))
        loss = torch.zeros((), dtype=torch.float32, device=x_NH.device)
        kl_N = torch.empty(n, dtype=torch.float32, device=x_NH.device)
        argmax_N = torch.empty(n, dtype=torch.long, device=x_NH.device)
        grad_x = torch.empty(x_NH.shape, dtype=dtype, device=x_NH.device) if want_grad else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if want_grad else None
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            x = x_NH[a:b].to(dtype)
            kl, argmax, grad = stats(x @ w.T, target_logp_NV[a:b], weight_N[a:b])
            kl_N[a:b], argmax_N[a:b] = kl, argmax
            loss += (kl * weight_N[a:b]).sum()
            if grad_x is not None and grad_w is not None:
                g = grad.to(dtype)
                grad_x[a:b] = g @ w
                grad_w += g.T @ x
        correct_N = (argmax_N + d2t_V[argmax_N]) == target_argmax_N
        ctx.grads = (grad_x, grad_w)
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
