"""On a GPU: the compiled flex-attention path equals the dense mask, values and gradients."""

from __future__ import annotations

import pytest
import torch

from speculators.train.attention import TTTAttention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_compiled_flex_equals_dense_with_gradients():
    torch.manual_seed(0)
    t, docs = 512, [0] * 200 + [1] * 250 + [-1] * 62
    doc = torch.tensor([docs], device="cuda")
    shapes = [(1, 8, t, 64), (1, 2, t, 64), (1, 2, t, 64)]
    leaves = [[torch.randn(s, device="cuda", requires_grad=True) for s in shapes] for _ in range(3)]
    results = {}
    for impl in ("dense", "flex"):
        ctx = TTTAttention(doc, impl)
        out = torch.stack([ctx.attend(0, *qkv) for qkv in leaves])
        grads = torch.autograd.grad(out.square().sum(), [x for qkv in leaves for x in qkv])
        results[impl] = out.detach(), grads
    torch.testing.assert_close(results["flex"][0], results["dense"][0], atol=2e-3, rtol=2e-3)
    for g_flex, g_dense in zip(results["flex"][1], results["dense"][1]):
        torch.testing.assert_close(g_flex, g_dense, atol=2e-3, rtol=2e-3)
