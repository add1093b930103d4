"""A small random draft, its verifier targets and one packed batch of two documents and
padding (the unit tests of the training step compare computations on it)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig

from speculators.models.eagle3 import Eagle3Draft, draft_layer_config
from speculators.train.step import VerifierTargets, ttt_forward

VERIFIER = LlamaConfig(
    hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=300, num_hidden_layers=4, head_dim=16,
)  # fmt: skip


def build(device: str, num_layers: int) -> tuple[Eagle3Draft, VerifierTargets, dict]:
    torch.manual_seed(0)
    vd, h, t = 100, VERIFIER.hidden_size, 128
    model = Eagle3Draft(draft_layer_config(VERIFIER, num_layers), vd, 3, h)
    target_ids = torch.randperm(VERIFIER.vocab_size)[:vd].sort().values
    model.d2t.copy_(target_ids - torch.arange(vd))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    targets = VerifierTargets.from_verifier(
        torch.rand(h, device=device) + 0.5,
        torch.randn(VERIFIER.vocab_size, h, device=device),
        1e-5,
        target_ids.to(device),
    )
    doc = torch.tensor([[0] * 40 + [1] * 50 + [-1] * 38])
    pos = torch.cat([torch.arange(40), torch.arange(50), torch.zeros(38, dtype=torch.long)])
    batch = {
        "input_ids": torch.randint(0, VERIFIER.vocab_size, (1, t)),
        "loss_mask": (torch.rand(1, t) > 0.2).long(),
        "doc_ids": doc,
        "position_ids": pos[None],
        "aux_hidden_states": torch.randn(1, t, 3 * h),
        "last_hidden_state": torch.randn(1, t, h),
    }
    return model.to(device), targets, {k: v.to(device) for k, v in batch.items()}


def loss_and_grads(model, targets, batch, compiled: bool, impl: str = "dense", zero: bool = True):
    """(loss, metric totals, gradients) of one TTT forward and backward; `zero=False` adds the
    gradients to those already there."""
    if zero:
        model.zero_grad()
    loss, metrics = ttt_forward(model, batch, targets, 3, 0.8, impl, compiled)  # type: ignore[arg-type]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), metrics.totals(), grads


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))
