"""The draft's lm_head fused with its KL loss: logits exist for one chunk of positions at a time.

Per chunk: logits = x W^T (bf16 under autocast), the draft's log-probs, KL(verifier || draft)
and the argmax; and, when a gradient is wanted, d loss / d logits = w (q sum(p) - p) in bf16,
written straight into one [N, Vd] buffer. The input gradient is then one product over all
positions; the weight gradient is one product in the backward, with the incoming scale folded
into the (small) input, written in the weight's dtype (fp32 from the product's accumulator on
GPUs: no scaling or casting pass over [Vd, H] afterwards). Per TTT step this keeps a few
[chunk, Vd] fp32 temporaries and the [N, Vd] bf16 gradient until the backward, instead of
[N, Vd] fp32 logits, log-probs and softmax; compiled, the element-wise work of a chunk is one
fused kernel. tests/unit/train/test_head_loss.py compares it with plain autograd.
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
    kl_C: torch.Tensor,
    argmax_C: torch.Tensor | None,
    grad_CV: torch.Tensor | None,
) -> None:
    """Write the KL per row, the draft argmax per row (if `argmax_C` is given) and (if `grad_CV`
    is given) the weighted d KL / d logits of one chunk into those slices of the caller's
    buffers; the arithmetic in fp32. Compiled, the results are stored straight into the buffers
    (no copy afterwards)."""
    logits = logits_CV.float()
    logq = torch.log_softmax(logits, dim=-1)
    p = target_logp_CV.exp()
    kl_C.copy_(torch.where(p > 0, p * (target_logp_CV - logq), 0.0).sum(-1))
    if argmax_C is not None:
        argmax_C.copy_(logits.argmax(-1))
    if grad_CV is not None:
        grad_CV.copy_((logq.exp() * p.sum(-1, keepdim=True) - p) * weight_C[:, None])


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
        target_argmax_N: torch.Tensor | None,
        weight_N: torch.Tensor,
        d2t_V: torch.Tensor,
        want_grad: bool,
        compiled: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        n, v = target_logp_NV.shape
        dtype = _compute_dtype(x_NH)
        w, x_all = weight_VH.to(dtype), x_NH.to(dtype)
        stats = _compiled_chunk_stats() if compiled else _chunk_stats
        chunk = max(1, _CHUNK_BYTES // (4 * v))
        kl_N = torch.empty(n, dtype=torch.float32, device=x_NH.device)
        argmax_N = None
        if target_argmax_N is not None:
            argmax_N = torch.empty(n, dtype=torch.long, device=x_NH.device)
        grad_NV = torch.empty((n, v), dtype=dtype, device=x_NH.device) if want_grad else None
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            grad = grad_NV[a:b] if grad_NV is not None else None
            top = argmax_N[a:b] if argmax_N is not None else None
            stats(x_all[a:b] @ w.T, target_logp_NV[a:b], weight_N[a:b], kl_N[a:b], top, grad)
        loss = (kl_N * weight_N).sum()
        # The input gradient as one full-size product now (as autograd would form it from the
        # logits); the weight gradient waits for the backward, where the incoming scale is
        # known: it goes into the (small) input x, so the product writes the finished
        # gradient in the weight's dtype (fp32 accumulation, no pass over it afterwards).
        ctx.grad_x = None
        if grad_NV is not None:
            ctx.grad_x = grad_NV @ w
            ctx.save_for_backward(grad_NV, x_all)
        correct_N: torch.Tensor | None = None
        if argmax_N is not None and target_argmax_N is not None:
            correct_N = torch.eq(argmax_N + d2t_V[argmax_N], target_argmax_N)
            ctx.mark_non_differentiable(correct_N)
        ctx.dtypes = (x_NH.dtype, weight_VH.dtype)
        ctx.mark_non_differentiable(kl_N)
        return loss, kl_N, correct_N

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        if ctx.grad_x is None:
            raise RuntimeError("linear_kl was called without a gradient; call it with one")
        grad_NV, x_all = ctx.saved_tensors
        gx = (ctx.grad_x * grad_loss).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[1]:
            gw = mm_to(grad_NV.T, x_all * grad_loss.to(x_all.dtype), ctx.dtypes[1])
        ctx.grad_x = None
        return gx, gw, None, None, None, None, None, None


def mm_to(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """a @ b written in `dtype`: on GPUs, bf16/fp16 inputs go straight to an fp32 result (the
    product's own accumulator, no rounding to bf16 and no cast afterwards)."""
    if a.is_cuda and dtype == torch.float32 and a.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(a, b, out_dtype=dtype)
    return (a @ b).to(dtype)


def linear_kl(
    x_NH: torch.Tensor,
    weight_VH: torch.Tensor,
    target_logp_NV: torch.Tensor,
    target_argmax_N: torch.Tensor | None,
    weight_N: torch.Tensor,
    d2t_V: torch.Tensor,
    compiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(sum_i weight_i KL_i, KL per position, whether the draft's argmax is the verifier's).

    x: the normalised draft hidden states [..., H]; weight: the draft lm_head [Vd, H];
    target_logp: the verifier's log-probs over the draft vocab [N, Vd]; target_argmax: its
    argmax over the full vocab [N], or None for a loss-only step (the third result is then
    None); d2t: draft id -> target id offset. Differentiable in x and W.
    `compiled`: run the per-chunk element-wise work as one torch.compile'd kernel.
    """
    x = x_NH.reshape(-1, x_NH.shape[-1])
    want_grad = torch.is_grad_enabled() and (x.requires_grad or weight_VH.requires_grad)
    loss, kl, correct = _LinearKL.apply(
        x, weight_VH, target_logp_NV, target_argmax_N, weight_N.float(), d2t_V, want_grad, compiled
    )
    return loss, kl, correct
