"""The two sides of offline speculative decoding: the verifier in transformers (DynamicCache,
aux layer outputs captured by forward hooks) and the EAGLE-3 draft (its DecodeCache)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from speculators.models.capture import LayerCapture
from speculators.models.eagle3 import DecodeCache, Eagle3Draft


class HFVerifier:
    """A transformers causal LM with a KV cache. Hooks keep the outputs of decoder layers
    `aux_layer_ids` (our convention: output of layer i before the final norm, as datagen
    stores them), concatenated [T, k*H] in the order the draft's `fc` expects."""

    def __init__(self, model: Any, aux_layer_ids: Sequence[int]) -> None:
        self.model = model
        self.aux_layer_ids = list(aux_layer_ids)
        self.device = next(model.parameters()).device
        self._capture = LayerCapture(model, self.aux_layer_ids)
        self.cache: Any = None
        # transformers renamed `past_key_values` to `cache` (5.2x); support both.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def start(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)

    @torch.inference_mode()
    def forward(self, input_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([input_ids], device=self.device)
        captured = self._capture.outputs
        captured.clear()
        kwargs = {self._cache_kwarg: self.cache}
        out = self.model(input_ids=ids, use_cache=True, **kwargs)  # fills self.cache in place
        aux = torch.cat([captured[i][0] for i in self.aux_layer_ids], dim=-1)
        return out.logits[0].float().cpu(), aux

    def crop(self, length: int) -> None:
        # A negative argument removes that many tokens in every transformers version (newer
        # ones reject a positive length).
        surplus = self.cache.get_seq_length() - length
        if surplus > 0:
            self.cache.crop(-surplus)

    def close(self) -> None:
        self._capture.close()


class EagleProposer:
    """Draft tokens from an Eagle3Draft: feed the newly verified rows (fused aux states), then
    K - 1 more steps on its own output hidden state, as training-time test trained it."""

    def __init__(self, draft: Any) -> None:
        self.draft: Eagle3Draft = draft
        self.device = draft.fc.weight.device
        self.dtype = draft.fc.weight.dtype
        self.target_ids = torch.arange(draft.draft_vocab_size, device=self.device) + draft.d2t
        self.vocab_size = int(draft.t2d.shape[0])
        self.cache = DecodeCache()

    def start(self) -> None:
        self.cache = DecodeCache()

    def _pick(
        self, logits_Vd: torch.Tensor, temperature: float, generator: torch.Generator
    ) -> tuple[int, torch.Tensor | None]:
        if temperature == 0:
            return int(self.target_ids[logits_Vd.argmax()]), None
        probs_Vd = torch.softmax(logits_Vd.float() / temperature, dim=-1).cpu()
        draft_id = int(torch.multinomial(probs_Vd, 1, generator=generator))
        probs_V = torch.zeros(self.vocab_size).index_copy_(0, self.target_ids.cpu(), probs_Vd)
        return int(self.target_ids[draft_id]), probs_V

    @torch.inference_mode()
    def propose(
        self,
        next_tokens: torch.Tensor,
        aux_hidden: torch.Tensor,
        first_row: int,
        num_tokens: int,
        temperature: float,
        generator: torch.Generator,
    ) -> tuple[list[int], torch.Tensor | None]:
        self.cache.truncate(first_row)  # drop the previous round's unverified steps
        rows = next_tokens.shape[0]
        ids = next_tokens.to(self.device)[None]
        positions = torch.arange(first_row, first_row + rows, device=self.device)[None]
        hidden = self.draft.fuse(aux_hidden.to(self.device, self.dtype)[None])
        logits, hidden = self.draft.step(ids, hidden, positions, self.cache)
        proposals, probs = [], []
        last_pos = first_row + rows - 1
        for s in range(num_tokens):
            token, p = self._pick(logits[0, -1], temperature, generator)
            proposals.append(token)
            probs.append(p)
            if s + 1 < num_tokens:
                ids = torch.tensor([[token]], device=self.device)
                positions = torch.tensor([[last_pos + s + 1]], device=self.device)
                logits, hidden = self.draft.step(ids, hidden[:, -1:], positions, self.cache)
        return proposals, None if temperature == 0 else torch.stack(probs)  # type: ignore[arg-type]
