"""Choosing the engine that runs the verifier: `--backend auto|transformers|vllm`."""

from __future__ import annotations

from collections.abc import Sequence

from speculators.config import DatagenConfig
from speculators.datagen.backends.base import HiddenStatesBackend
from speculators.models.vllm import choose_backend


def resolve_backend_name(config: DatagenConfig) -> tuple[str, str | None]:
    """The backend to use and, when `auto` fell back to transformers, a note saying why."""
    return choose_backend(config.backend)


def load_backend(config: DatagenConfig, layer_ids: Sequence[int]) -> HiddenStatesBackend:
    """Start the backend `config.backend` names, capturing `layer_ids` (our convention)."""
    name, _ = resolve_backend_name(config)
    if name == "vllm":
        # The vllm module exposes `load_vllm_backend(config, layer_ids)`; it imports vllm itself.
        from speculators.datagen.backends.vllm import load_vllm_backend

        return load_vllm_backend(config, list(layer_ids))
    from speculators.datagen.backends.transformers import TransformersBackend

    return TransformersBackend.from_config(config, list(layer_ids))
