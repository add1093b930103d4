"""The `--device` choice of every stage that runs a model (datagen, train, eval)."""

from __future__ import annotations

import torch

from speculators.errors import UserInputError


def resolve_device(choice: str) -> torch.device:
    """auto: cuda when a GPU is visible, else cpu; cuda without a GPU is the user's error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda: no CUDA GPU is visible. Use --device cpu or auto.")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)
