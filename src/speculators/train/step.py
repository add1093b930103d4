"""One training-time-test forward over a packed batch: the unrolled draft steps, loss, metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from speculators.models.eagle3 import Eagle3Draft
from speculators.train.attention import AttentionImpl, TTTAttention
from speculators.train.loss import (
    TTTMetrics,
    in_doc,
    kl_and_correct,
    shift,
    verifier_targets,
    weighted_loss,
)


@dataclass
class VerifierTargets:
    """The frozen verifier pieces that turn stored last-layer states into target distributions."""

    norm_H: torch.Tensor
    lm_head_VH: torch.Tensor
    eps: float
    draft_target_ids: torch.Tensor  # target id of each draft id, ascending

    def __call__(self, last_hidden_BTH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, h = last_hidden_BTH.shape
        logp, argmax = verifier_targets(
            last_hidden_BTH.reshape(b * t, h),
            self.norm_H,
            self.lm_head_VH,
            self.eps,
            self.draft_target_ids,
        )
        return logp.view(b, t, -1), argmax.view(b, t)


def ttt_forward(
    model: Eagle3Draft,
    batch: dict[str, torch.Tensor],
    targets: VerifierTargets,
    ttt_steps: int,
    step_loss_decay: float,
    impl: AttentionImpl = "dense",
) -> tuple[torch.Tensor, TTTMetrics]:
    """Unroll `ttt_steps` draft steps on a packed batch; return the weighted loss and metrics.

    Step s feeds token i+1+s and the previous step's output hidden state (step 0: the fused
    verifier features of position i) at position pos_i + s.
    """
    ids, doc, pos = batch["input_ids"], batch["doc_ids"], batch["position_ids"]
    loss_mask = batch["loss_mask"].bool()
    target_logp, target_argmax = targets(batch["last_hidden_state"])
    hidden = model.fuse(batch["aux_hidden_states"].to(model.fc.weight.dtype))
    kv = TTTAttention(doc, impl)
    metrics = TTTMetrics(ttt_steps, num_tokens=int((doc >= 0).sum()))
    prefix_right = torch.ones_like(loss_mask)
    losses = []
    for s in range(ttt_steps):
        tokens = shift(ids, 1 + s) * in_doc(doc, 1 + s)
        hidden = model(tokens, hidden, pos + s, kv)
        logits = model.logits(hidden)
        scored = in_doc(doc, 2 + s) & shift(loss_mask, 2 + s)
        kl, correct = kl_and_correct(
            logits.flatten(0, 1),
            shift(target_logp, 1 + s).flatten(0, 1),
            shift(target_argmax, 1 + s).flatten(),
            model.d2t,
        )
        kl, correct = kl.view_as(scored), correct.view_as(scored)
        losses.append((kl * scored).sum() / scored.sum().clamp(min=1))
        metrics.add_step(s, kl, correct, scored, prefix_right)
        prefix_right = prefix_right & correct
    return weighted_loss(losses, step_loss_decay), metrics
