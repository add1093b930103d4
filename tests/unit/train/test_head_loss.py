"""The fused, chunked lm_head + KL equals the plain computation: values, metrics and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from speculators.train import head_loss
from speculators.train.head_loss import linear_kl


def reference(x, w, target_logp, target_argmax, weight, d2t):
    """Logits in full, autograd through log_softmax: the textbook forward KL."""
    logits = x @ w.T
    logq = F.log_softmax(logits, -1)
    kl = (target_logp.exp() * (target_logp - logq)).sum(-1)
    top = logits.argmax(-1)
    return (kl * weight).sum(), kl, (top + d2t[top]) == target_argmax


@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
def test_values_and_gradients_match_the_unfused_computation(monkeypatch, chunk_rows):
    vd, n, h = 11, 40, 6
    monkeypatch.setattr(head_loss, "_CHUNK_BYTES", chunk_rows * 4 * vd)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, h, generator=g, dtype=torch.float64)
    w = torch.randn(vd, h, generator=g, dtype=torch.float64)
    target_logp = F.log_softmax(torch.randn(n, vd, generator=g, dtype=torch.float64) * 3, -1)
    target_argmax = torch.randint(0, 30, (n,), generator=g)
    weight = (torch.rand(n, generator=g) > 0.3).double()
    weight /= weight.sum()
    d2t = torch.arange(vd) * 2  # draft id i is target id 3i
    target_argmax[::3] = 3 * torch.randint(0, vd, (len(target_argmax[::3]),), generator=g)

    got, want = [], []
    for fn, out in ((linear_kl, got), (reference, want)):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss, kl, correct = fn(xi, wi, target_logp, target_argmax, weight, d2t)
        (2.5 * loss).backward()
        out.extend([loss.detach(), kl, correct, xi.grad, wi.grad])
    for a, b in zip(got, want):
        if a.dtype == torch.bool:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a.to(b.dtype), b, rtol=1e-5, atol=1e-6)
    assert 0 < int(got[2].sum()) < n  # both outcomes occur


def test_no_gradient_work_without_autograd():
    x, w = torch.randn(5, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    logp = F.log_softmax(torch.randn(5, 4), -1)
    with torch.no_grad():
        loss, kl, _ = linear_kl(
            x, w, logp, torch.zeros(5, dtype=torch.long), torch.ones(5), 0 * torch.arange(4)
        )
    assert not loss.requires_grad and kl.shape == (5,)


def test_zero_target_probability_gives_no_nan():
    x, w = torch.randn(3, 2, requires_grad=True), torch.randn(4, 2)
    logp = torch.tensor([[0.0, -float("inf"), -float("inf"), -float("inf")]] * 3)
    loss, kl, _ = linear_kl(
        x,
        w,
        logp,
        torch.zeros(3, dtype=torch.long),
        torch.ones(3) / 3,
        torch.zeros(4, dtype=torch.long),
    )
    loss.backward()
    assert torch.isfinite(kl).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(kl, -F.log_softmax(x.detach() @ w.T, -1)[:, 0])


def test_loss_only_call_has_the_same_loss_and_gradients_and_no_argmax():
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(12, 5, generator=g), torch.randn(7, 5, generator=g)
    logp = F.log_softmax(torch.randn(12, 7, generator=g), -1)
    weight, d2t = torch.ones(12) / 12, torch.zeros(7, dtype=torch.long)
    out = []
    for argmax in (torch.zeros(12, dtype=torch.long), None):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss, kl, correct = linear_kl(xi, wi, logp, argmax, weight, d2t)
        loss.backward()
        out.append((loss.detach(), kl, correct, xi.grad, wi.grad))
    (l1, kl1, c1, gx1, gw1), (l2, kl2, c2, gx2, gw2) = out
    assert c1 is not None and c2 is None
    for a, b in ((l1, l2), (kl1, kl2), (gx1, gx2), (gw1, gw2)):
        assert torch.equal(a, b)
