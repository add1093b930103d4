"""The seam between datagen and the engines that run the verifier (transformers, vLLM)."""

from __future__ import annotations

from typing import Protocol

import torch


class HiddenStatesBackend(Protocol):
    """Runs the verifier over token sequences and returns hidden states in OUR layer-id
    convention (SPEC §2: id i = output of decoder layer i before the final norm).

    `capture` takes a batch of token-id sequences and returns, per sequence and in the same
    order, one bf16 CPU tensor [L_i, H] per layer id (aux layers first, the last layer last).
    A backend never computes logits it does not need.
    """

    name: str
    hidden_size: int
    num_layers: int

    def capture(self, batch: list[list[int]]) -> list[list[torch.Tensor]]: ...

    def close(self) -> None: ...
