"""Targets, loss and metrics of training-time test (SPEC §3).

Row position i at TTT step s reads token i+1+s, predicts token i+2+s, and is scored against the
verifier's distribution at position i+1+s (from the stored last-layer hidden state, through the
verifier's own final norm and lm_head). Positions whose predicted token lies outside the
document, or is not an assistant token (loss mask 0), are not scored.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

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
    pad: int = 0,
    compiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs over the draft vocab [N + pad, Vd] fp32, argmax over the FULL vocab [N + pad]).

    Chunked over positions so that full-vocab logits never exist for all N at once. `pad` extra
    rows (uniform log-probs, argmax -1) let callers take shifted views [s : s + N] without a copy.
    `compiled`: fuse the norm, the gather and the log-softmax of a chunk (torch.compile).
    """
    n, vd = last_hidden_NH.shape[0], draft_target_ids.numel()
    device = last_hidden_NH.device
    logp = torch.full((n + pad, vd), -math.log(vd), dtype=torch.float32, device=device)
    argmax = torch.full((n + pad,), -1, dtype=torch.long, device=device)
    targets_of = _compiled_target_chunk() if compiled else _target_chunk
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        logp[start:end], argmax[start:end] = targets_of(
            last_hidden_NH[start:end], norm_H, lm_head_VH, eps, draft_target_ids
        )
    return logp, argmax


def _target_chunk(
    hidden_CH: torch.Tensor,
    norm_H: torch.Tensor,
    lm_head_VH: torch.Tensor,
    eps: float,
    draft_target_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits_CV = rms_norm(hidden_CH, norm_H, eps).to(lm_head_VH.dtype) @ lm_head_VH.T
    logp = F.log_softmax(logits_CV[:, draft_target_ids].float(), dim=-1)
    return logp, logits_CV.argmax(-1)


@lru_cache(maxsize=1)
def _compiled_target_chunk() -> Any:
    return torch.compile(_target_chunk)


def shift(x_BT: torch.Tensor, n: int) -> torch.Tensor:
    """x[:, i + n] at position i (wrapped values at the end are masked by `in_doc`)."""
    return x_BT.roll(-n, dims=1) if n else x_BT


def in_doc(doc_ids_BT: torch.Tensor, n: int) -> torch.Tensor:
    """True where position i + n exists and belongs to the same (non-padding) document as i."""
    t = doc_ids_BT.shape[1]
    inside = torch.arange(t, device=doc_ids_BT.device) + n < t
    return inside & (shift(doc_ids_BT, n) == doc_ids_BT) & (doc_ids_BT >= 0)


_SUMS = ("loss_sum", "scored", "correct", "chain_num", "chain_den")


class TTTMetrics:
    """Sums over scored positions, per TTT step; add batches, then read `summary()`.

    `add_step` keeps its sums on the device: reading them would make the host wait for the GPU
    in the middle of a step. They are fetched all at once (one synchronisation) when first read.
    """

    def __init__(self, num_steps: int, num_tokens: int | torch.Tensor = 0) -> None:
        self.num_steps = num_steps
        self._totals = {name: [0.0] * num_steps for name in _SUMS}
        self._tokens = 0
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step or -1 for tokens, values)
        self.add_tokens(num_tokens)

    def add_tokens(self, num_tokens: int | torch.Tensor) -> None:
        if isinstance(num_tokens, torch.Tensor):
            self._pending.append((-1, num_tokens.detach().reshape(1).double()))
        else:
            self._tokens += int(num_tokens)

    def add_step(
        self,
        s: int,
        kl_N: torch.Tensor,
        correct_N: torch.Tensor,
        scored_N: torch.Tensor,
        prefix_right_N: torch.Tensor,
    ) -> None:
        w = scored_N.double()
        right = correct_N & scored_N
        chain_den = prefix_right_N & scored_N
        values = [kl_N.detach().double() * w, w, right, chain_den & correct_N, chain_den]
        self._pending.append((s, torch.stack([v.double().sum() for v in values])))

    def _flush(self) -> None:
        if not self._pending:
            return
        values = torch.cat([v.cpu() for _, v in self._pending]).tolist()  # one sync per device
        i = 0
        for s, v in self._pending:
            if s < 0:
                self._tokens += int(values[i])
            else:
                for name, x in zip(_SUMS, values[i : i + len(_SUMS)]):
                    self._totals[name][s] += x
            i += v.numel()
        self._pending = []

    def totals(self) -> dict[str, list[float]]:
        """The sums per TTT step, by name (loss_sum, scored, correct, chain_num, chain_den)."""
        self._flush()
        return {name: list(v) for name, v in self._totals.items()}

    @classmethod
    def from_totals(
        cls, totals: dict[str, list[float]], num_steps: int, num_tokens: int
    ) -> TTTMetrics:
        out = cls(num_steps, num_tokens)
        for name in _SUMS:
            out._totals[name] = list(totals[name])
        return out

    @property
    def num_tokens(self) -> int:
        self._flush()
        return self._tokens

    def merge(self, other: TTTMetrics) -> None:
        if other.num_steps != self.num_steps:
            raise ValueError(f"merging metrics of {other.num_steps} and {self.num_steps} steps")
        self._pending.extend(other._pending)  # device values: shared, not moved
        for name in _SUMS:
            self._totals[name] = [a + b for a, b in zip(self._totals[name], other._totals[name])]
        self._tokens += other._tokens

    def summary(self, prefix: str = "") -> dict[str, float]:
        t = self.totals()
        out: dict[str, float] = {}
        survive, accept_len = 1.0, 1.0
        for s in range(self.num_steps):
            n = max(t["scored"][s], 1.0)
            out[f"{prefix}loss_{s}"] = t["loss_sum"][s] / n
            out[f"{prefix}acc_{s}"] = t["correct"][s] / n
            den = t["chain_den"][s]
            cond = t["chain_num"][s] / den if den else 0.0
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
