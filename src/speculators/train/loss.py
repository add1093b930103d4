"""Targets, loss and metrics of training-time test (SPEC §3).

Row position i at TTT step s reads token i+1+s, predicts token i+2+s, and is scored against the
verifier's distribution at position i+1+s (from the stored last-layer hidden state, through the
verifier's own final norm and lm_head). Positions whose predicted token lies outside the
document, or is not an assistant token (loss mask 0), are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)) * weight.float()


@torch.no_grad()
def verifier_targets(
    last_hidden_NH: torch.Tensor,
    norm_H: torch.Tensor,
    lm_head_VH: torch.Tensor,
    eps: float,
    draft_target_ids: torch.Tensor,
    chunk: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs over the draft vocab [N, Vd] fp32, argmax over the FULL vocab [N]).

    Chunked over positions so that full-vocab logits never exist for all N at once.
    """
    logp, argmax = [], []
    for start in range(0, last_hidden_NH.shape[0], chunk):
        h = rms_norm(last_hidden_NH[start : start + chunk], norm_H, eps).to(lm_head_VH.dtype)
        logits_NV = h @ lm_head_VH.T
        argmax.append(logits_NV.argmax(-1))
        logp.append(F.log_softmax(logits_NV[:, draft_target_ids].float(), dim=-1))
    return torch.cat(logp), torch.cat(argmax)


def shift(x_BT: torch.Tensor, n: int) -> torch.Tensor:
    """x[:, i + n] at position i (wrapped values at the end are masked by `in_doc`)."""
    return x_BT.roll(-n, dims=1) if n else x_BT


def in_doc(doc_ids_BT: torch.Tensor, n: int) -> torch.Tensor:
    """True where position i + n exists and belongs to the same (non-padding) document as i."""
    t = doc_ids_BT.shape[1]
    inside = torch.arange(t, device=doc_ids_BT.device) + n < t
    return inside & (shift(doc_ids_BT, n) == doc_ids_BT) & (doc_ids_BT >= 0)


def kl_and_correct(
    draft_logits_NVd: torch.Tensor,
    target_logp_NVd: torch.Tensor,
    target_argmax_N: torch.Tensor,
    d2t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position forward KL(verifier || draft) over the draft vocab, and whether the draft's
    argmax (as a verifier id) equals the verifier's argmax over its full vocab."""
    logq = F.log_softmax(draft_logits_NVd.float(), dim=-1)
    kl_N = (target_logp_NVd.exp() * (target_logp_NVd - logq)).sum(-1)
    draft_argmax = draft_logits_NVd.argmax(-1)
    correct_N = (draft_argmax + d2t[draft_argmax]) == target_argmax_N
    return kl_N, correct_N


@dataclass
class TTTMetrics:
    """Sums over scored positions, per TTT step; add batches, then read `summary()`."""

    num_steps: int
    loss_sum: list[float] = field(default_factory=list)
    scored: list[float] = field(default_factory=list)
    correct: list[float] = field(default_factory=list)
    chain_num: list[float] = field(default_factory=list)  # all steps <= s right, step s scored
    chain_den: list[float] = field(default_factory=list)  # all steps < s right, step s scored
    num_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("loss_sum", "scored", "correct", "chain_num", "chain_den"):
            setattr(self, name, [0.0] * self.num_steps)

    def add_step(
        self,
        s: int,
        kl_N: torch.Tensor,
        correct_N: torch.Tensor,
        scored_N: torch.Tensor,
        prefix_right_N: torch.Tensor,
    ) -> None:
        w = scored_N.float()
        self.loss_sum[s] += float((kl_N.detach() * w).sum())
        self.scored[s] += float(w.sum())
        self.correct[s] += float((correct_N & scored_N).sum())
        self.chain_den[s] += float((prefix_right_N & scored_N).sum())
        self.chain_num[s] += float((prefix_right_N & correct_N & scored_N).sum())

    def merge(self, other: TTTMetrics) -> None:
        for name in ("loss_sum", "scored", "correct", "chain_num", "chain_den"):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(self, name, [a + b for a, b in zip(mine, theirs)])
        self.num_tokens += other.num_tokens

    def summary(self, prefix: str = "") -> dict[str, float]:
        out: dict[str, float] = {}
        survive, accept_len = 1.0, 1.0
        for s in range(self.num_steps):
            n = max(self.scored[s], 1.0)
            out[f"{prefix}loss_{s}"] = self.loss_sum[s] / n
            out[f"{prefix}acc_{s}"] = self.correct[s] / n
            cond = self.chain_num[s] / self.chain_den[s] if self.chain_den[s] else 0.0
            out[f"{prefix}cond_acc_{s}"] = cond
            survive *= cond
            accept_len += survive
        # Tokens per verifier forward under greedy verification: the bonus token plus the
        # expected run of accepted draft tokens (sum over s of P(steps 0..s all accepted)).
        out[f"{prefix}accept_len"] = accept_len
        return out


def weighted_loss(step_losses: list[torch.Tensor], decay: float) -> torch.Tensor:
    """Sum over TTT steps of decay**s * loss_s."""
    return sum(decay**s * loss for s, loss in enumerate(step_losses))  # type: ignore[return-value]
