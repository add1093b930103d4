"""Choosing the engine that runs the verifier: `--backend auto|transformers|vllm`."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from speculators.config import DatagenConfig
from speculators.datagen.backends.base import HiddenStatesBackend
from speculators.errors import UserInputError

VLLM_INSTALL_HINT = "pip install 'speculators[datagen]'"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_backend_name(config: DatagenConfig) -> tuple[str, str | None]:
    """The backend to use and, when `auto` fell back to transformers, a note saying why.

    `auto` is vllm when vllm is importable and a GPU is present, transformers otherwise."""
    if config.backend == "vllm":
        if not vllm_available():
            raise UserInputError(
                f"--backend vllm: vllm is not installed in this environment. Install it with "
                f"{VLLM_INSTALL_HINT} (needs a CUDA GPU), or use --backend transformers."
            )
        return "vllm", None
    if config.backend == "auto" and vllm_available() and _gpu_available():
        return "vllm", None
    if config.backend == "auto":
        why = "vllm is not installed" if not vllm_available() else "no GPU is present"
        return "transformers", f"--backend auto: using transformers ({why})."
    return "transformers", None


def load_backend(config: DatagenConfig, layer_ids: Sequence[int]) -> HiddenStatesBackend:
    """Start the backend `config.backend` names, capturing `layer_ids` (our convention)."""
    name, _ = resolve_backend_name(config)
    if name == "vllm":
        # The vllm module exposes `load_vllm_backend(config, layer_ids)`; it imports vllm itself.
        from speculators.datagen.backends.vllm import load_vllm_backend

        return load_vllm_backend(config, list(layer_ids))
    from speculators.datagen.backends.transformers import TransformersBackend

    return TransformersBackend.from_config(config, list(layer_ids))
