"""Hidden-state capture with Hugging Face transformers: one forward pass per batch, no logits.

The base model (no lm_head) runs over a right-padded batch; forward hooks on the chosen decoder
layers keep their outputs, which are exactly our layer ids (SPEC §2: output of decoder layer i,
before the final norm, also for the last layer). Right padding with an attention mask leaves
every real token's positions and attention unchanged, so a batch equals its samples one by one.
`launch` returns while the GPU still computes; the real tokens then travel to pinned host memory
on a side stream (staging.py), so the next batch's forward is queued before this one lands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from speculators.config import DatagenConfig
from speculators.datagen.backends.staging import StagedCapture, StagingPool, stage
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
        self._pool = StagingPool(device)
        self._copy_stream: torch.cuda.Stream | None = None

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

    def _inputs(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Right-padded input ids and, when there is padding, the attention mask, on the device.
        Built in pinned memory on CUDA: a copy from pageable memory would wait for the GPU."""
        lengths = [len(ids) for ids in batch]
        width = max(lengths)
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        if self.device.type == "cuda":
            input_ids, attention_mask = input_ids.pin_memory(), attention_mask.pin_memory()
        # A batch without padding needs no mask, which keeps the fast causal attention path.
        mask = None if min(lengths) == width else attention_mask.to(self.device, non_blocking=True)
        return input_ids.to(self.device, non_blocking=True), mask

    @torch.inference_mode()
    def launch(self, batch: list[list[int]]) -> StagedCapture:
        """Queue the forward pass and the copy of the kept layers to the host; return without
        waiting for either (on CUDA). Only real tokens are copied, sample by sample."""
        input_ids, mask = self._inputs(batch)
        self._captured.clear()
        self.model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        lengths = [len(ids) for ids in batch]
        # [sum_i layers * L_i, H], sample-major: one kernel, no padding rows.
        packed = torch.cat(
            [self._captured[k][row, :n] for row, n in enumerate(lengths) for k in self.layer_ids]
        )
        self._captured.clear()
        if self._copy_stream is None and self.device.type == "cuda":
            self._copy_stream = torch.cuda.Stream(self.device)
        return stage(self._pool, packed, lengths, len(self.layer_ids), self._copy_stream)

    def capture(self, batch: list[list[int]]) -> list[list[torch.Tensor]]:
        pending = self.launch(batch)
        try:
            return [[t.clone() for t in sample] for sample in pending.wait()]
        finally:
            pending.release()

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
