"""The vllm backend's worker side: hooks that run inside vLLM's GPU worker processes.

vLLM imports this module by name (`worker_extension_cls`) in every worker and mixes
`HiddenStatesExtension` into its Worker class; the driver calls its methods through
`LLM.collective_rpc`. See docs/datagen-vllm.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any, TypedDict

import torch


class StepCapture(TypedDict):
    """What the worker records for one forward pass of vLLM's flattened token batch."""

    req_ids: list[str]  # vLLM's batch order: request k owns the k-th run of tokens
    positions: torch.Tensor  # long [T]
    input_ids: torch.Tensor  # long [T]
    hidden: torch.Tensor  # [num_layer_ids, T, H], our layer-id order


def combine_layer_output(output: Any) -> torch.Tensor:
    """The true output of a vLLM decoder layer from what it returns.

    vLLM's Llama-style layers return `(hidden, residual)` and leave the residual add to the
    next layer's fused add+RMSNorm, so the layer's output (HF `hidden_states[i + 1]`) is
    `hidden + residual`. It must be summed at once: the next layer's fused norm updates both
    tensors in place.
    """
    if isinstance(output, tuple):
        hidden, residual = output[0], output[1] if len(output) > 1 else None
        return hidden if residual is None else hidden + residual
    return output


def find_decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layer stack of a vLLM causal LM (`model.model.layers`, Llama-style)."""
    get_language_model = getattr(model, "get_language_model", None)  # multimodal wrappers
    lm = get_language_model() if callable(get_language_model) else model
    layers = getattr(getattr(lm, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise RuntimeError(
            f"{type(model).__name__}: no `model.layers` decoder stack; the vllm backend supports "
            "Llama-style models. Use --backend transformers for this model."
        )
    return layers


class HiddenStatesExtension:
    """Mixed into each vLLM GPU worker (`worker_extension_cls`); `self` is the worker.

    Called through `LLM.collective_rpc`. Only tensor-parallel rank 0 records: after the
    all-reduce every rank holds the same full hidden states.
    """

    model_runner: Any

    def speculators_install(self, layer_ids: list[int]) -> int:
        from vllm.distributed import get_tensor_model_parallel_rank

        model = self.model_runner.model
        layers = find_decoder_layers(model)
        self._speculators_on = False
        self._speculators_steps: list[StepCapture] = []
        self._speculators_writer = get_tensor_model_parallel_rank() == 0
        self._speculators_num = len(layer_ids)
        if self._speculators_writer:
            self._speculators_step: dict[str, Any] | None = None
            model.register_forward_pre_hook(self._speculators_begin_step, with_kwargs=True)
            for slot, layer_id in enumerate(layer_ids):
                layers[layer_id].register_forward_hook(partial(self._speculators_layer, slot))
            model.register_forward_hook(self._speculators_end_step)
        return len(layers)

    def speculators_record(self) -> None:
        self._speculators_steps = []
        self._speculators_on = True

    def speculators_collect(self, path: str) -> str | None:
        """Stop recording; rank 0 saves its steps to `path` (same host) and returns it."""
        from speculators.artifacts.atomic import atomic_torch_save

        self._speculators_on = False
        if not self._speculators_writer:
            return None
        atomic_torch_save(path, self._speculators_steps)
        self._speculators_steps = []
        return path

    def _speculators_begin_step(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not self._speculators_on:
            return
        input_ids, positions = kwargs.get("input_ids"), kwargs.get("positions")
        if input_ids is None or positions is None or positions.dim() != 1:
            raise RuntimeError("vllm backend: the model ran without token ids or 1-D positions.")
        self._speculators_step = {
            "req_ids": list(self.model_runner.input_batch.req_ids),
            "positions": positions.to("cpu", torch.long),
            "input_ids": input_ids.to("cpu", torch.long),
            "hidden": {},
        }

    def _speculators_layer(self, slot: int, module: Any, args: tuple, output: Any) -> None:
        if self._speculators_on and self._speculators_step is not None:
            self._speculators_step["hidden"][slot] = combine_layer_output(output)

    def _speculators_end_step(self, module: Any, args: tuple, output: Any) -> None:
        step, self._speculators_step = self._speculators_step, None
        if not self._speculators_on or step is None:
            return
        if len(step["hidden"]) != self._speculators_num:
            raise RuntimeError("vllm backend: a hooked decoder layer did not run in this step.")
        hidden = [step["hidden"][slot] for slot in range(self._speculators_num)]
        self._speculators_steps.append(
            StepCapture(
                req_ids=step["req_ids"],
                positions=step["positions"],
                input_ids=step["input_ids"],
                hidden=torch.stack(hidden).to("cpu"),  # one device sync per step
            )
        )
