"""A run that diverged: a NaN or infinite loss, gradient norm or weight stops training before
anything of the broken epoch is saved, with a message naming the last good checkpoint.

The step's loss and gradient norm are read on the host once per step anyway (for the metrics);
the trainer checks those values, so the check adds no synchronisation to the hot loop. Before
each save the weights and validation metrics are checked too: the last step of an epoch can
break the weights after its loss was read.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from speculators.artifacts.checkpoint import is_complete_checkpoint
from speculators.errors import UserInputError


def diverged(trainer: Any, what: str, step: int | None = None) -> UserInputError:
    """`step`: the global step that diverged (default: the trainer's last)."""
    o = trainer.options
    step = trainer.global_step if step is None else step
    last = trainer.save_path / str(trainer.epoch - 1)
    where = (
        f"the last good checkpoint is {last}, and a rerun resumes from it"
        if trainer.epoch > 0 and is_complete_checkpoint(last)
        else "no epoch had been saved yet"
    )
    return UserInputError(
        f"training diverged in epoch {trainer.epoch} (step {step}): {what}. "
        f"Nothing of this epoch was saved; {where}. Lower --lr (now {o.lr:g}) or "
        f"--max-grad-norm (now {o.max_grad_norm:g}) and rerun."
    )


def check_finite(trainer: Any, summary: dict[str, float]) -> None:
    """Every rank's weights, and the validation metrics, are finite (all ranks agree)."""
    local = [
        (~torch.isfinite(p.to_local() if hasattr(p, "to_local") else p)).sum()
        for p in trainer.model.parameters()
        if p.requires_grad
    ]
    (total,) = trainer.parallel.sum([float(torch.stack(local).sum())])  # one sync per save
    if total:
        raise diverged(trainer, f"{int(total)} weights are NaN or infinite after the last step")
    broken = [k for k, v in summary.items() if k.startswith("val/") and not math.isfinite(v)]
    if broken:
        raise diverged(trainer, f"the validation {broken[0]} is {summary[broken[0]]:g}")
