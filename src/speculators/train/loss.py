"""Targets, loss and metrics of training-time test (SPEC §3).

Row position i at TTT step s reads token i+1+s, predicts token i+2+s, and is scored against the
verifier's distribution at position i+1+s (from the stored last-layer hidden state, through the
verifier's own final norm and lm_head). Positions whose predicted token lies outside the
document, or is not an assistant token (loss mask 0), are not scored.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Literal

import torch
import torch.nn.functional as F

from speculators.train.staged import Staged

# Which verifier argmax accuracy is scored against (None: no accuracy, the loss only).
ArgmaxOver = Literal["full", "draft"] | None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)) * weight.float()


def draft_rows_first(
    lm_head_VH: torch.Tensor, draft_target_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the verifier lm_head with the draft vocab's rows first, the target id of each row).

    Both parts keep ascending target ids. Done once per run, so that every step's target
    chunk reads the draft-vocab logits as one contiguous block instead of gathering them."""
    rest = torch.ones(lm_head_VH.shape[0], dtype=torch.bool)
    rest[draft_target_ids.cpu()] = False
    row_ids = torch.cat([draft_target_ids.cpu(), rest.nonzero().flatten()])
    return lm_head_VH[row_ids.to(lm_head_VH.device)], row_ids.to(draft_target_ids.device)


@torch.no_grad()
def verifier_targets(
    last_hidden_NH: torch.Tensor,
    norm_H: torch.Tensor,
    head_VH: torch.Tensor,
    eps: float,
    row_ids_V: torch.Tensor,
    num_draft: int,
    chunk: int = 2048,
    pad: int = 0,
    compiled: bool = False,
    argmax: ArgmaxOver = "full",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs over the draft vocab [N + pad, Vd] fp32, argmax over the FULL vocab [N + pad]).

    `head_VH`, `row_ids_V`: the verifier lm_head with the draft rows first (`draft_rows_first`).
    The argmax is the target id with the largest logit, the lowest id among equals: exactly
    `argmax` over the logits in vocab order. Chunked over positions so that full-vocab logits
    never exist for all N at once. `pad` extra rows (uniform log-probs, argmax -1) let callers
    take shifted views [s : s + N] without a copy. `compiled`: fuse each chunk's element-wise
    work and reductions (torch.compile). `argmax`: "full" as above; "draft", the argmax over
    the draft vocab only (what speculators 0.9.0 scores against; benchmarks compare with it);
    None, no argmax (the second result is None). Both of the latter read only the draft rows of
    the lm_head (the rest is ~3/4 of a Llama-3 lm_head).
    """
    n = last_hidden_NH.shape[0]
    device = last_hidden_NH.device
    logp = torch.empty((n + pad, num_draft), dtype=torch.float32, device=device)
    logp[n:] = -math.log(num_draft)
    top = None
    if argmax is not None:
        top = torch.empty(n + pad, dtype=torch.long, device=device)
        top[n:] = -1
    if argmax != "full":
        head_VH = head_VH[:num_draft]
    targets_of = _compiled_target_chunk() if compiled else _target_chunk
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        targets_of(
            last_hidden_NH[start:end],
            norm_H,
            head_VH,
            eps,
            row_ids_V,
            num_draft,
            logp[start:end],
            None if top is None else top[start:end],
        )
    return logp, top


def _target_chunk(
    hidden_CH: torch.Tensor,
    norm_H: torch.Tensor,
    head_VH: torch.Tensor,
    eps: float,
    row_ids_V: torch.Tensor,
    num_draft: int,
    logp_CV: torch.Tensor,
    argmax_C: torch.Tensor | None,
) -> None:
    """Write one chunk's draft-vocab log-probs and (unless `argmax_C` is None) full-vocab argmax
    into the given slices (compiled, stored there directly)."""
    logits_CV = rms_norm(hidden_CH, norm_H, eps).to(head_VH.dtype) @ head_VH.T
    draft = logits_CV[:, :num_draft].float()
    logp_CV.copy_(F.log_softmax(draft, dim=-1))
    if argmax_C is None:
        return
    best, at = draft.max(-1)  # the first of equal maxima: the lowest id, ids being ascending
    best_id = row_ids_V[at]
    if logits_CV.shape[1] > num_draft:
        other, other_at = logits_CV[:, num_draft:].float().max(-1)
        other_id = row_ids_V[num_draft + other_at]
        tie_id = torch.minimum(best_id, other_id)
        best_id = torch.where(best > other, best_id, torch.where(other > best, other_id, tie_id))
    argmax_C.copy_(best_id)


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


_SUMS = ("loss_sum", "scored", "correct", "acc_scored", "chain_num", "chain_den")


class TTTMetrics:
    """Sums over scored positions, per TTT step; add batches, then read `summary()`.

    `add_step` keeps its sums on the device: reading them would make the host wait for the GPU
    in the middle of a step. They are fetched all at once when first read; `stage()` starts
    that copy early, so that the read waits for them alone, not for the steps queued after.
    Accuracy and the acceptance chain count only the steps that measured them (`correct_N`
    given): training measures them on every `--metrics-every`-th step, validation always.
    """

    def __init__(self, num_steps: int, num_tokens: int | torch.Tensor = 0) -> None:
        self.num_steps = num_steps
        self._totals = {name: [0.0] * num_steps for name in _SUMS}
        self._tokens = 0
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step or -1 for tokens, values)
        self._staged: Staged | None = None  # the first _staged_count of _pending, on their way
        self._staged_count = 0
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
        correct_N: torch.Tensor | None,
        scored_N: torch.Tensor,
        prefix_right_N: torch.Tensor,
    ) -> None:
        w = scored_N.double()
        if correct_N is None:  # a loss-only step: nothing to add to the accuracy sums
            zero = torch.zeros_like(w)
            right = acc_scored = chain_num = chain_den = zero
        else:
            right, acc_scored = correct_N & scored_N, scored_N
            chain_den = prefix_right_N & scored_N
            chain_num = chain_den & correct_N
        values = [kl_N.detach().double() * w, w, right, acc_scored, chain_num, chain_den]
        self._pending.append((s, torch.stack([v.double().sum() for v in values])))

    def stage(self) -> None:
        """Start copying the sums added so far to the host; reading them later waits for
        them alone (not for whatever the GPU was given after)."""
        if self._pending and self._staged_count != len(self._pending):
            self._staged = Staged(torch.cat([v for _, v in self._pending]))
            self._staged_count = len(self._pending)

    def _flush(self) -> None:
        if not self._pending:
            return
        self.stage()
        assert self._staged is not None
        values = self._staged.tolist()
        i = 0
        for s, v in self._pending:
            if s < 0:
                self._tokens += int(values[i])
            else:
                for name, x in zip(_SUMS, values[i : i + len(_SUMS)]):
                    self._totals[name][s] += x
            i += v.numel()
        self._pending, self._staged, self._staged_count = [], None, 0

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

    @property
    def has_accuracy(self) -> bool:
        return any(self.totals()["acc_scored"])

    def summary(self, prefix: str = "") -> dict[str, float]:
        """loss_s per TTT step; and, if any step measured them, acc_s, cond_acc_s, accept_len."""
        t = self.totals()
        out: dict[str, float] = {}
        survive, accept_len = 1.0, 1.0
        measured = any(t["acc_scored"])
        for s in range(self.num_steps):
            out[f"{prefix}loss_{s}"] = t["loss_sum"][s] / max(t["scored"][s], 1.0)
            if not measured:
                continue
            out[f"{prefix}acc_{s}"] = t["correct"][s] / max(t["acc_scored"][s], 1.0)
            den = t["chain_den"][s]
            cond = t["chain_num"][s] / den if den else 0.0
            out[f"{prefix}cond_acc_{s}"] = cond
            survive *= cond
            accept_len += survive
        if measured:
            # Tokens per verifier forward under greedy verification: the bonus token plus the
            # expected run of accepted draft tokens (sum over s of P(steps 0..s all accepted)).
            out[f"{prefix}accept_len"] = accept_len
        return out


def weighted_loss(step_losses: list[torch.Tensor], decay: float) -> torch.Tensor:
    """Sum over TTT steps of decay**s * loss_s."""
    return sum(decay**s * loss for s, loss in enumerate(step_losses))  # type: ignore[return-value]
