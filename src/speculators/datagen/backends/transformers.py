"""Hidden-state capture with Hugging Face transformers: one forward pass per batch, no logits.

The base model (no lm_head) runs over a right-padded batch; forward hooks on the chosen decoder
layers keep their outputs, which are exactly our layer ids (SPEC §2: output of decoder layer i,
before the final norm, also for the last layer). Right padding with an attention mask leaves
every real token's positions and attention unchanged, so a batch equals its samples one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from speculators.config import DatagenConfig
from speculators.errors import UserInputError, describe

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda: no CUDA GPU is available here; use --device cpu.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPU; fp32 on CPU, where bf16 matmuls are several times slower."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def decoder_layers(model: torch.nn.Module, num_layers: int) -> torch.nn.ModuleList:
    """The decoder layer list of a base model (`.layers` for Llama-like models)."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) == num_layers:
        return layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            return module
    raise UserInputError(
        f"cannot find the {num_layers} decoder layers of {type(model).__name__}; the transformers "
        "backend supports decoder-only models whose layers form one ModuleList."
    )


class TransformersBackend:
    """HiddenStatesBackend on a transformers base model."""

    name = "transformers"

    def __init__(self, model: torch.nn.Module, layer_ids: Sequence[int], device: torch.device):
        self.model = model
        self.layer_ids = list(layer_ids)
        self.device = device
        self.dtype = next(model.parameters()).dtype
        config: Any = model.config
        self.hidden_size = int(config.hidden_size)
        self.num_layers = int(config.num_hidden_layers)
        self._captured: dict[int, torch.Tensor] = {}
        layers = decoder_layers(model, self.num_layers)
        self._hooks = [layers[i].register_forward_hook(self._hook(i)) for i in self.layer_ids]

    @classmethod
    def from_config(cls, config: DatagenConfig, layer_ids: Sequence[int]) -> TransformersBackend:
        from transformers import AutoModel

        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the load report lists lm_head as unused: expected
        try:
            # AutoModel loads the base model only: the lm_head weights are never read.
            model = AutoModel.from_pretrained(config.target_model_path, dtype=dtype)
        except (OSError, ValueError) as e:
            raise UserInputError(
                f"--target-model-path {config.target_model_path}: cannot load the model "
                f"({describe(e)})."
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
        model = getattr(model, "language_model", model)  # multimodal wrappers: the text part
        return cls(model.to(device).eval(), layer_ids, device)

    def _hook(self, layer_id: int) -> Any:
        def keep(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            self._captured[layer_id] = hidden.to(torch.bfloat16)

        return keep

    @torch.inference_mode()
    def capture(self, batch: list[list[int]]) -> list[list[torch.Tensor]]:
        lengths = [len(ids) for ids in batch]
        width = max(lengths)
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        self._captured.clear()
        # A batch without padding needs no mask, which keeps the fast causal attention path.
        mask = None if min(lengths) == width else attention_mask.to(self.device)
        self.model(input_ids=input_ids.to(self.device), attention_mask=mask, use_cache=False)
        # [layers, B, T, H] in one device-to-host copy.
        stacked = torch.stack([self._captured[i] for i in self.layer_ids]).cpu()
        self._captured.clear()
        return [
            [stacked[k, row, :n] for k in range(len(self.layer_ids))]
            for row, n in enumerate(lengths)
        ]

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
