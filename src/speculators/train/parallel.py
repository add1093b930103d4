"""What the trainer needs from the processes it runs in, and the one-process version of it."""

from __future__ import annotations

from typing import Protocol

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from speculators.train.loss import TTTMetrics


class Parallel(Protocol):
    """What the trainer needs from the processes it runs in (see train/distributed.py)."""

    @property
    def is_main(self) -> bool: ...
    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...

    def sum(self, values: list[float]) -> list[float]: ...
    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]: ...
    def optimizer_state(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict: ...
    def load_model_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None: ...
    def load_optimizer_state(
        self, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict
    ) -> None: ...
    def barrier(self) -> None: ...


class SingleProcess:
    """One process: sums are the values, state dicts are the module's own. The optimizer state
    uses the same parameter-name keys as the distributed one, so either can resume the other."""

    is_main = True
    rank = 0
    world_size = 1
    _full = StateDictOptions(full_state_dict=True)

    def sum(self, values: list[float]) -> list[float]:
        return values

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()

    def optimizer_state(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
        return get_optimizer_state_dict(model, opt, options=self._full)

    def load_model_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(state)

    def load_optimizer_state(
        self, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict
    ) -> None:
        params = (state.get("param_groups") or [{}])[0].get("params") or [""]
        if isinstance(params[0], int):  # written by torch's own optimizer.state_dict()
            opt.load_state_dict(state)
        else:
            set_optimizer_state_dict(model, opt, state, options=self._full)

    def barrier(self) -> None:
        pass


def reduce_metrics(metrics: TTTMetrics, parallel: Parallel) -> TTTMetrics:
    """Sum the metric numerators and denominators over all ranks (ratios are taken after)."""
    totals, n = metrics.totals(), metrics.num_steps
    names = list(totals)
    flat = [v for name in names for v in totals[name]] + [float(metrics.num_tokens)]
    summed = parallel.sum(flat)
    out = {name: summed[i * n : (i + 1) * n] for i, name in enumerate(names)}
    return TTTMetrics.from_totals(out, n, int(summed[-1]))
