"""The seam between datagen and the engines that run the verifier (transformers, vLLM)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class HiddenStatesBackend(Protocol):
    """Runs the verifier over token sequences and returns hidden states in OUR layer-id
    convention (SPEC §2: id i = output of decoder layer i before the final norm).

    `capture` takes a batch of token-id sequences and returns, per sequence and in the same
    order, one bf16 CPU tensor [L_i, H] per layer id (aux layers first, the last layer last).
    A backend never computes logits it does not need.

    A backend may also offer `launch(batch) -> PendingCapture`: start the batch and return
    before its results are on the host, so that the caller can launch the next batch first
    (the transformers backend does; see `launch_capture` for the fallback).
    """

    name: str
    hidden_size: int
    num_layers: int

    def capture(self, batch: list[list[int]]) -> list[list[torch.Tensor]]: ...

    def close(self) -> None: ...


class PendingCapture(Protocol):
    """A launched batch. `wait()` blocks until its hidden states are on the host and returns
    them as `capture` would; they stay valid until `release()`, which frees their memory for
    a later batch. Both may be called from another thread than the one that launched."""

    def wait(self) -> list[list[torch.Tensor]]: ...

    def release(self) -> None: ...


@dataclass
class ReadyCapture:
    """A batch captured synchronously: already on the host, nothing to release."""

    states: list[list[torch.Tensor]]

    def wait(self) -> list[list[torch.Tensor]]:
        return self.states

    def release(self) -> None:
        pass


def launch_capture(
    backend: HiddenStatesBackend, batch: list[list[int]], pipelined: bool = True
) -> PendingCapture:
    """`backend.launch(batch)` when the backend has it (and `pipelined`), else a synchronous
    `capture` wrapped as already done. The generation loop calls only this."""
    launch = getattr(backend, "launch", None)
    if pipelined and launch is not None:
        pending: PendingCapture = launch(batch)
        return pending
    return ReadyCapture(backend.capture(batch))
