"""Replies with Hugging Face transformers: left-padded batched `generate`, greedy at temperature 0.

The model's own generation defaults (sampling settings, repetition penalties a checkpoint may
ship) are replaced by neutral ones: a reply is the verifier's plain distribution at the
requested temperature, the same one `speculators eval` decodes with.
"""

from __future__ import annotations

from typing import Any

import torch

from speculators.config.regenerate import RegenerateConfig
from speculators.devices import resolve_device
from speculators.errors import UserInputError, describe
from speculators.regenerate.engine import Reply, split_at_stop

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


class TransformersEngine:
    name = "transformers"

    def __init__(self, model: Any, stop_ids: set[int], pad_id: int, temperature: float):
        from transformers import GenerationConfig

        self.model = model
        self.stop_ids = stop_ids
        self.pad_id = pad_id
        self.temperature = temperature
        param = next(model.parameters())
        self.device = str(param.device)
        self.dtype = str(param.dtype).removeprefix("torch.")
        self.max_context = int(getattr(model.config, "max_position_embeddings", None) or 1 << 30)
        model.generation_config = GenerationConfig()  # neutral defaults, see the docstring

    @classmethod
    def from_config(
        cls, config: RegenerateConfig, stop_ids: set[int], pad_id: int
    ) -> TransformersEngine:
        from transformers import AutoModelForCausalLM

        device = resolve_device(config.device)
        auto = torch.bfloat16 if device.type == "cuda" else torch.float32  # fp32: fast on CPUs
        dtype = auto if config.dtype == "auto" else DTYPES[config.dtype]
        try:
            model = AutoModelForCausalLM.from_pretrained(config.target_model_path, dtype=dtype)
        except (OSError, ValueError) as e:
            raise UserInputError(
                f"--target-model-path {config.target_model_path}: cannot load the model "
                f"({describe(e)})."
            ) from None
        model = model.to(device)  # type: ignore[arg-type]  # transformers' stubs want a model
        return cls(model.eval(), stop_ids, pad_id, config.temperature)

    @torch.inference_mode()
    def generate(
        self, prompts: list[list[int]], budgets: list[int], seeds: list[int]
    ) -> list[Reply]:
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):  # left padding: every reply starts at column `width`
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        sampling: dict[str, Any] = {"do_sample": False}
        if self.temperature > 0:
            sampling = {"do_sample": True, "temperature": self.temperature, "top_k": 0}
            torch.manual_seed(seeds[0])  # the batch's first prompt seeds the batch
        gen = GenerationConfig(
            max_new_tokens=max(budgets),
            eos_token_id=sorted(self.stop_ids),
            pad_token_id=self.pad_id,
            top_p=1.0,
            **sampling,
        )
        device = self.model.device
        out = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=gen
        )
        new = out[:, width:].tolist()
        return [split_at_stop(row, budget, self.stop_ids) for row, budget in zip(new, budgets)]

    def close(self) -> None:
        del self.model
