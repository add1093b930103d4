"""Hidden-state capture with Hugging Face transformers: one forward pass per batch, no logits.

The base model (no lm_head) runs over a right-padded batch; forward hooks on the chosen decoder
layers keep their outputs, which are exactly our layer ids (SPEC §2: output of decoder layer i,
before the final norm, also for the last layer). Right padding with an attention mask leaves
every real token's positions and attention unchanged, so a batch equals its samples one by one.
On GPUs the decoder layers run torch.compile'd (`--no-compile`: eagerly).
`launch` returns while the GPU still computes; the real tokens then travel to pinned host memory
on a side stream (staging.py), so the next batch's forward is queued before this one lands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from speculators.config import DatagenConfig
from speculators.datagen.backends.staging import StagedCapture, StagingPool, stage
from speculators.devices import resolve_device
from speculators.errors import UserInputError, compile_errors, compile_failure, describe
from speculators.models.capture import LayerCapture

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPU; fp32 on CPU, where bf16 matmuls are several times slower."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def compile_backend(config: DatagenConfig, device: torch.device) -> str | None:
    """inductor on GPUs unless --no-compile; eager on CPUs (compiling pays off only on GPUs)."""
    return "inductor" if device.type == "cuda" and not config.no_compile else None


def compile_layers(layers: torch.nn.ModuleList, backend: Any = "inductor") -> None:
    """torch.compile each decoder layer's forward, with dynamic shapes (batches change size and
    width). The compiled function is an instance attribute that shadows the class's forward, so
    calling the module still runs its forward hooks (eagerly, around the compiled code) and the
    weights are untouched; `uncompile_layers` removes it. The layers share their code and so
    their compiled graphs, but each layer is a cache entry: the limit is raised to hold them."""
    limit = max(torch._dynamo.config.cache_size_limit, 2 * len(layers))
    torch._dynamo.config.cache_size_limit = limit
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True, backend=backend)


def uncompile_layers(layers: torch.nn.ModuleList) -> None:
    for layer in layers:
        layer.__dict__.pop("forward", None)


def attends_to_whole_prefix(config: Any) -> bool:
    """True when every layer is plain causal attention: no sliding window (Mistral, Gemma's
    sliding layers), no chunked attention (Llama 4). Other models keep transformers' mask."""
    if getattr(config, "sliding_window", None) is not None:
        return False
    if getattr(config, "attention_chunk_size", None) is not None:
        return False
    layer_types = getattr(config, "layer_types", None) or []
    return all(kind == "full_attention" for kind in layer_types)


def padded_causal_mask(lengths_B: torch.Tensor, width: int) -> torch.Tensor:
    """[B, 1, width, width] bool, True where query q may attend key k: k <= q and k is a real
    token of its row. Built on the device from the lengths, so the host never waits for it;
    transformers builds the same mask from a 2-D padding mask, but first checks on the host
    whether that mask has any padding, which waits for the GPU before every forward pass.
    Padding queries (q >= length) still see the real keys, so no row is fully masked."""
    pos = torch.arange(width, device=lengths_B.device)
    causal = pos[None, :] <= pos[:, None]  # [q, k]
    real_key = pos[None, :] < lengths_B[:, None]  # [B, k]
    return (causal[None] & real_key[:, None, :])[:, None]


class TransformersBackend:
    """HiddenStatesBackend on a transformers base model."""

    name = "transformers"

    def __init__(
        self,
        model: torch.nn.Module,
        layer_ids: Sequence[int],
        device: torch.device,
        compile_backend: Any = None,
    ):
        """`compile_backend`: torch.compile the decoder layers with this backend, a name or a
        callable (None: eager)."""
        self.model = model
        self.layer_ids = list(layer_ids)
        self.device = device
        self.dtype = next(model.parameters()).dtype
        config: Any = model.config
        self.hidden_size = int(config.hidden_size)
        self.num_layers = int(config.num_hidden_layers)
        self._capture = LayerCapture(model, self.layer_ids, torch.bfloat16)
        if compile_backend is not None:
            compile_layers(self._capture.layers, compile_backend)
        self._pool = StagingPool(device)
        self._copy_stream: torch.cuda.Stream | None = None
        # Padded batches get our own 4-D mask (padded_causal_mask) where it is the right one:
        # SDPA takes a boolean mask as is (eager attention adds a float mask), and the mask is
        # plain causal. False: transformers builds its mask from the 2-D padding mask.
        sdpa = getattr(config, "_attn_implementation", None) == "sdpa"
        self.prebuilt_mask = sdpa and attends_to_whole_prefix(config)

    @property
    def compiled(self) -> bool:
        """Whether the decoder layers run compiled now (compile_layers, not undone)."""
        return any("forward" in layer.__dict__ for layer in self._capture.layers)

    @classmethod
    def from_config(cls, config: DatagenConfig, layer_ids: Sequence[int]) -> TransformersBackend:
        from transformers import AutoModel

        device = resolve_device(config.device)
        if device.type == "cuda":  # this process's GPU (datagen.shards picks it per process)
            device = torch.device("cuda", torch.cuda.current_device())
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
        return cls(model.to(device).eval(), layer_ids, device, compile_backend(config, device))

    def _inputs(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Right-padded input ids and, when there is padding, the attention mask, on the device.
        Built in pinned memory on CUDA: a copy from pageable memory would wait for the GPU."""
        lengths = [len(ids) for ids in batch]
        width = max(lengths)
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        if min(lengths) == width:  # no padding: no mask, which keeps the fast causal path
            return self._to_device(input_ids), None
        if not self.prebuilt_mask:
            attention_mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
            return self._to_device(input_ids), self._to_device(attention_mask)
        return self._to_device(input_ids), padded_causal_mask(
            self._to_device(torch.tensor(lengths)), width
        )

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def launch(self, batch: list[list[int]]) -> StagedCapture:
        """Queue the forward pass and the copy of the kept layers to the host; return without
        waiting for either (on CUDA). Only real tokens are copied, sample by sample."""
        input_ids, mask = self._inputs(batch)
        captured = self._capture.outputs
        captured.clear()
        try:
            self.model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        except compile_errors() as e:
            if not self.compiled:
                raise
            raise compile_failure(
                e,
                "the verifier's decoder layers",
                "about 1.2x slower; the samples already written are kept",
            ) from None
        lengths = [len(ids) for ids in batch]
        # [sum_i layers * L_i, H], sample-major: one kernel, no padding rows.
        packed = torch.cat(
            [captured[k][row, :n] for row, n in enumerate(lengths) for k in self.layer_ids]
        )
        captured.clear()
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
        self._capture.close()
