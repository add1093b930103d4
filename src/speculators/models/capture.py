"""The verifier's decoder layers and their outputs, as datagen stores them and eval feeds them
to the draft: layer id i is the output of decoder layer i before the final norm (SPEC §2), kept
by a forward hook on that layer (also for the last layer, whose Hugging Face hidden state comes
after the norm)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from speculators.errors import UserInputError


def decoder_layers(model: torch.nn.Module, num_layers: int) -> torch.nn.ModuleList:
    """The decoder layer list of a base model (`.layers`) or a causal LM (`.model.layers` for
    Llama-like models): the ModuleList of `num_layers` modules."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) == num_layers:
        return layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            return module
    raise UserInputError(
        f"cannot find the {num_layers} decoder layers of {type(model).__name__}; supported are "
        "decoder-only models whose layers form one ModuleList."
    )


class LayerCapture:
    """Forward hooks on the decoder layers `layer_ids` of `model`: after a forward pass,
    `outputs[i]` is layer i's output ([B, T, H], cast to `dtype` when given)."""

    def __init__(
        self, model: torch.nn.Module, layer_ids: Sequence[int], dtype: torch.dtype | None = None
    ) -> None:
        config: Any = model.config
        self.layers = decoder_layers(model, int(config.num_hidden_layers))
        self.outputs: dict[int, torch.Tensor] = {}
        self._dtype = dtype
        self._hooks = [self.layers[i].register_forward_hook(self._keep(i)) for i in layer_ids]

    def _keep(self, layer_id: int) -> Any:
        def keep(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            self.outputs[layer_id] = hidden if self._dtype is None else hidden.to(self._dtype)

        return keep

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
