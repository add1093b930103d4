"""One training-time-test forward over a packed batch: the unrolled draft steps, loss, metrics."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from speculators.models.eagle3 import Eagle3Draft
from speculators.train.attention import AttentionImpl, TTTAttention
from speculators.train.head_loss import linear_kl
from speculators.train.loss import (
    ArgmaxOver,
    TTTMetrics,
    draft_rows_first,
    in_doc,
    shift,
    verifier_targets,
    weighted_loss,
)


@dataclass
class VerifierTargets:
    """The frozen verifier pieces that turn stored last-layer states into target distributions.

    `head_VH` is the verifier lm_head with the draft vocab's rows first and `row_ids_V` the
    target id of each row (`from_verifier` builds both from the lm_head in vocab order)."""

    norm_H: torch.Tensor
    head_VH: torch.Tensor
    eps: float
    row_ids_V: torch.Tensor
    num_draft: int

    @classmethod
    def from_verifier(
        cls,
        norm_H: torch.Tensor,
        lm_head_VH: torch.Tensor,
        eps: float,
        draft_target_ids: torch.Tensor,
    ) -> VerifierTargets:
        """From the verifier's final norm and lm_head (vocab order) and the target id of each
        draft id (ascending)."""
        head, row_ids = draft_rows_first(lm_head_VH, draft_target_ids)
        return cls(norm_H, head, eps, row_ids, int(draft_target_ids.numel()))

    def to(self, device: torch.device, dtype: torch.dtype) -> VerifierTargets:
        """On `device`, the lm_head in `dtype`."""
        return VerifierTargets(
            self.norm_H.to(device),
            self.head_VH.to(device, dtype),
            self.eps,
            self.row_ids_V.to(device),
            self.num_draft,
        )

    def __call__(
        self,
        last_hidden_BTH: torch.Tensor,
        pad: int = 0,
        compiled: bool = False,
        argmax: ArgmaxOver = "full",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log-probs over the draft vocab [B*T + pad, Vd], the verifier's argmax [B*T + pad]
        over the vocab `argmax` names, or None), positions flattened row after row; `pad` rows
        at the end are placeholders."""
        return verifier_targets(
            last_hidden_BTH.flatten(0, 1),
            self.norm_H,
            self.head_VH,
            self.eps,
            self.row_ids_V,
            self.num_draft,
            pad=pad,
            compiled=compiled,
            argmax=argmax,
        )


def ttt_forward(
    model: Eagle3Draft,
    batch: dict[str, torch.Tensor],
    targets: VerifierTargets,
    ttt_steps: int,
    step_loss_decay: float,
    impl: AttentionImpl = "dense",
    compiled: bool = False,
    accuracy: ArgmaxOver = "full",
) -> tuple[torch.Tensor, TTTMetrics]:
    """Unroll `ttt_steps` draft steps on a packed batch; return the weighted loss and metrics.

    Step s feeds token i+1+s and the previous step's output hidden state (step 0: the fused
    verifier features of position i) at position pos_i + s. Its targets are the verifier's at
    position i+1+s: a view of the flattened targets shifted by 1+s (positions whose shifted
    target crosses into the next row or the padding are outside their document: not scored).
    `accuracy`: against the verifier's argmax over the full vocab (SPEC §3), over the draft
    vocab ("draft", speculators 0.9.0's measure), or None: the loss only, no argmax at all.
    Nothing here waits for the GPU: metrics stay on the device until read.
    """
    ids, doc, pos = batch["input_ids"], batch["doc_ids"], batch["position_ids"]
    loss_mask = batch["loss_mask"].bool()
    n = ids.numel()
    target_logp, target_argmax = targets(
        batch["last_hidden_state"], ttt_steps + 1, compiled, argmax=accuracy
    )
    aux = batch["aux_hidden_states"]
    if not torch.is_autocast_enabled(aux.device.type):  # autocast casts to bf16 by itself
        aux = aux.to(model.fc.weight.dtype)
    hidden = model.fuse(aux)
    kv = TTTAttention(doc, impl)
    metrics = TTTMetrics(ttt_steps, num_tokens=(doc >= 0).sum())
    prefix_right = torch.ones(n, dtype=torch.bool, device=ids.device)
    losses = []
    for s in range(ttt_steps):
        tokens = shift(ids, 1 + s) * in_doc(doc, 1 + s)
        hidden = model(tokens, hidden, pos + s, kv)
        scored = (in_doc(doc, 2 + s) & shift(loss_mask, 2 + s)).flatten()
        weight = scored.float() / scored.sum().clamp(min=1)
        loss, kl, correct = model.head(
            hidden,
            partial(
                linear_kl,
                target_logp_NV=target_logp[1 + s : 1 + s + n],
                target_argmax_N=None if target_argmax is None else target_argmax[1 + s : 1 + s + n],
                weight_N=weight,
                d2t_V=model.d2t,
                compiled=compiled,
            ),
        )
        losses.append(loss)
        metrics.add_step(s, kl, correct, scored, prefix_right)
        if correct is not None:
            prefix_right = prefix_right & correct
    return weighted_loss(losses, step_loss_decay), metrics
