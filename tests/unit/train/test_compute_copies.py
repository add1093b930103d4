"""bf16 copies of the parameters, one per micro-batch: the gradients are those of casting at
every use (to bf16 rounding), land on the fp32 parameters, and the model is left as it was."""

from __future__ import annotations

import pytest
import torch
from random_draft import build, loss_and_grads, rel_err

from speculators.train.compiled import compile_draft
from speculators.train.compute_copies import ComputeCopies


def with_copies(model, targets, batch, copies: ComputeCopies):
    model.zero_grad()
    with copies:
        result = loss_and_grads(model, targets, batch, compiled=False)
    copies.collect_grads()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return result[0], result[1], grads


def test_gradients_match_casting_at_every_use_and_land_on_the_fp32_parameters():
    model, targets, batch = build("cpu", 2)
    params = dict(model.named_parameters())
    fp32 = loss_and_grads(model, targets, batch, compiled=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        every_use = loss_and_grads(model, targets, batch, compiled=False)
        copies = ComputeCopies(model, torch.bfloat16)
        got = with_copies(model, targets, batch, copies)
    assert dict(model.named_parameters()) == params  # the same fp32 Parameter objects
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert got[2].keys() == fp32[2].keys()
    for name, grad in fp32[2].items():
        assert got[2][name].dtype == torch.float32
        # bf16 rounding, not a wrong gradient (which would be off by tens of percent)
        limit = max(2 * rel_err(every_use[2][name], grad), 3e-2)
        assert rel_err(got[2][name], grad) <= limit, name
    assert rel_err(got[0], fp32[0]) < 1e-2
    assert got[1]["scored"] == fp32[1]["scored"]


def test_gradients_of_micro_batches_add_up():
    model, targets, batch = build("cpu", 1)
    copies = ComputeCopies(model, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        once = with_copies(model, targets, batch, copies)[2]
        model.zero_grad()
        for _ in range(2):
            with copies:
                loss_and_grads(model, targets, batch, compiled=False, zero=False)
            copies.collect_grads()
    for name, p in model.named_parameters():
        if name in once:
            torch.testing.assert_close(p.grad, 2 * once[name], rtol=1e-6, atol=0)


def test_an_error_inside_puts_the_parameters_back():
    model, _, _ = build("cpu", 1)
    before = dict(model.named_parameters())
    with pytest.raises(RuntimeError, match="boom"), ComputeCopies(model, torch.bfloat16):
        assert model.fc.weight.dtype == torch.bfloat16
        raise RuntimeError("boom")
    assert dict(model.named_parameters()) == before
    assert model.fc.weight.dtype == torch.float32


def test_fresh_copies_each_step_do_not_recompile_the_compiled_pieces():
    from torch._dynamo.testing import CompileCounterWithBackend

    model, targets, batch = build("cpu", 1)
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    compile_draft(model, backend=counter)
    copies = ComputeCopies(model, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with_copies(model, targets, batch, copies)
        first = counter.frame_count
        for _ in range(3):
            with_copies(model, targets, batch, copies)
    assert first > 0 and counter.frame_count == first
