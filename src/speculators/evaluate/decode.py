"""Chain speculative decoding of one sequence: the draft proposes K tokens, the verifier checks
them in one forward pass (KV caches on both sides), greedy at temperature 0 and rejection
sampling above it, so the output follows the verifier's own distribution exactly.

Sequence bookkeeping: after each verification the tokens x_0..x_{m-1} are final; the verifier's
cache holds x_0..x_{m-2} (x_{m-1}, its own pick, is fed next together with the drafts) and the
draft's cache holds one row j per verified position j < m - 1 (token x_{j+1} with the verifier's
fused aux states at j, SPEC §3), so its last row predicts x_m.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class Proposer(Protocol):
    """Proposes draft tokens. `start()` begins a sequence; `propose` gets the rows verified since
    the last call (next tokens [r], verifier aux states [r, k*H], position of the first row),
    drops its own unverified state and returns K target-vocab ids and, at temperature > 0, the
    probabilities [K, V] they were sampled from (None: a deterministic proposal)."""

    def start(self) -> None: ...

    def propose(
        self,
        next_tokens: torch.Tensor,
        aux_hidden: torch.Tensor,
        first_row: int,
        num_tokens: int,
        temperature: float,
        generator: torch.Generator,
    ) -> tuple[list[int], torch.Tensor | None]: ...


class Verifier(Protocol):
    """The verifier with a KV cache: `forward(ids)` appends and returns (logits [T, V] fp32,
    aux hidden states [T, k*H]); `crop(n)` keeps the first n cached positions."""

    def start(self) -> None: ...

    def forward(self, input_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def crop(self, length: int) -> None: ...


@dataclass
class DecodeStats:
    """Counts vLLM's spec-decode metrics are made of, summed over sequences."""

    num_speculative_tokens: int
    num_drafts: int = 0  # verification rounds with a proposal
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    num_verifier_passes: int = 0
    num_generated_tokens: int = 0

    def __post_init__(self) -> None:
        if not self.accepted_per_position:
            self.accepted_per_position = [0] * self.num_speculative_tokens

    def record_round(self, num_proposed: int, num_accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_proposed
        self.num_accepted_tokens += num_accepted
        for i in range(num_accepted):
            self.accepted_per_position[i] += 1

    @property
    def mean_acceptance_length(self) -> float:
        """vLLM's definition: 1 + accepted draft tokens per draft round."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0

    @property
    def per_position_acceptance_rate(self) -> list[float]:
        n = max(self.num_drafts, 1)
        return [a / n for a in self.accepted_per_position]

    @property
    def draft_acceptance_rate(self) -> float:
        return self.num_accepted_tokens / max(self.num_draft_tokens, 1)

    @property
    def verifier_passes_per_token(self) -> float:
        return self.num_verifier_passes / max(self.num_generated_tokens, 1)


def sample_token(logits_V: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    if temperature == 0:
        return int(logits_V.argmax())
    probs = torch.softmax(logits_V.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def verify_round(
    draft_ids: list[int],
    draft_probs_KV: torch.Tensor | None,
    logits_KV: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
) -> tuple[int, int]:
    """(number of draft tokens accepted, the verifier's next token) for one round.

    `logits_KV` has K + 1 rows: row i scores draft token i, the last row gives the bonus token.
    Temperature 0: accept while the draft equals the verifier's argmax. Otherwise accept draft
    token x with probability min(1, p(x) / q(x)) and on rejection sample from max(0, p - q)
    renormalised (Leviathan et al. 2023), so the result is distributed exactly as p.
    A proposal without probabilities is a point mass (q(x) = 1).
    """
    if temperature == 0:
        target = logits_KV.argmax(-1).tolist()
        for i, token in enumerate(draft_ids):
            if token != target[i]:
                return i, target[i]
        return len(draft_ids), target[len(draft_ids)]
    probs_KV = torch.softmax(logits_KV.float() / temperature, dim=-1)
    for i, token in enumerate(draft_ids):
        p = probs_KV[i]
        if draft_probs_KV is None:
            q = torch.zeros_like(p)
            q[token] = 1.0
        else:
            q = draft_probs_KV[i].to(p)
        u = float(torch.rand((), generator=generator))
        if q[token] > 0 and u * float(q[token]) < float(p[token]):
            continue
        residual = (p - q).clamp(min=0)
        if float(residual.sum()) <= 0:  # p == q: rejection has probability 0; be safe
            residual = p
        return i, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    return len(draft_ids), int(torch.multinomial(probs_KV[-1], 1, generator=generator))


def _finish(out: list[int], max_new_tokens: int, stop_ids: set[int]) -> list[int]:
    """Cut at the first stop token (kept, as `generate` keeps it) and at max_new_tokens."""
    out = out[:max_new_tokens]
    for i, token in enumerate(out):
        if token in stop_ids:
            return out[: i + 1]
    return out


@torch.inference_mode()
def speculative_generate(
    verifier: Verifier,
    proposer: Proposer,
    prompt_ids: list[int],
    max_new_tokens: int,
    num_speculative_tokens: int,
    temperature: float,
    stop_ids: set[int],
    generator: torch.Generator,
    stats: DecodeStats,
) -> list[int]:
    """Generate up to `max_new_tokens` after `prompt_ids`; counts go into `stats`."""
    verifier.start()
    proposer.start()
    logits, aux = verifier.forward(list(prompt_ids))
    stats.num_verifier_passes += 1
    out = [sample_token(logits[-1], temperature, generator)]
    tokens = [*prompt_ids, out[0]]
    pending_ids, pending_aux, first_row = tokens[1:], aux, 0
    while len(out) < max_new_tokens and not stop_ids.intersection(out):
        m = len(tokens)
        draft_ids, draft_probs = proposer.propose(
            torch.tensor(pending_ids),
            pending_aux,
            first_row,
            num_speculative_tokens,
            temperature,
            generator,
        )
        logits, aux = verifier.forward([tokens[-1], *draft_ids])
        stats.num_verifier_passes += 1
        accepted, next_token = verify_round(draft_ids, draft_probs, logits, temperature, generator)
        stats.record_round(len(draft_ids), accepted)
        verifier.crop(m + accepted)
        new = [*draft_ids[:accepted], next_token]
        tokens += new
        out += new
        pending_ids, pending_aux, first_row = new, aux[: accepted + 1], m - 1
    out = _finish(out, max_new_tokens, stop_ids)
    stats.num_generated_tokens += len(out)
    return out


def as_generator(seed: int, device: Any = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
