"""Replies with vLLM on GPUs, through its public API only: `LLM(...)` and `LLM.generate` on token
ids with one `SamplingParams` per request (vLLM 0.26 through 0.33; models/vllm.py starts it).

Prompts arrive rendered and tokenized by the verifier's own tokenizer, exactly as the
transformers engine gets them, and replies leave as token ids: both engines write the same
records. Prefix caching is on: a conversation's later turns share its earlier prompt.
"""

from __future__ import annotations

from typing import Any

from speculators.config.regenerate import RegenerateConfig
from speculators.models import vllm as engine
from speculators.regenerate.engine import Reply, split_at_stop

FLAG = "--backend vllm"


def engine_kwargs(config: RegenerateConfig) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM`."""
    kwargs: dict[str, Any] = {
        "model": config.target_model_path,
        "tensor_parallel_size": config.tensor_parallel_size,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "dtype": "auto" if config.dtype == "auto" else config.dtype,
        "seed": config.seed,
        "max_num_seqs": config.batch_size,
        "enable_prefix_caching": True,
        # Our SamplingParams are the whole story: no defaults from the model's
        # generation_config.json (a checkpoint's top_p or repetition penalty).
        "generation_config": "vllm",
        "disable_log_stats": True,
    }
    if config.seq_length is not None:
        kwargs["max_model_len"] = config.seq_length
    if config.tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp"
    return kwargs


def sampling_kwargs(
    config: RegenerateConfig, budget: int, seed: int, stop_ids: set[int]
) -> dict[str, Any]:
    """Keyword arguments of one request's `vllm.SamplingParams`."""
    kwargs: dict[str, Any] = {
        "temperature": config.temperature,
        "max_tokens": budget,
        "stop_token_ids": sorted(stop_ids),
        "detokenize": False,  # the caller decodes, with the same tokenizer for both engines
    }
    if config.temperature > 0:
        kwargs["seed"] = seed
    return kwargs


class VllmEngine:
    name = "vllm"

    def __init__(self, config: RegenerateConfig, stop_ids: set[int]):
        self.vllm = engine.import_vllm(FLAG)
        engine.require_gpu(FLAG, "use --backend transformers (or --backend auto, which picks it)")
        self.config = config
        self.stop_ids = stop_ids
        self.llm = engine.start_engine(
            self.vllm, engine_kwargs(config), FLAG, config.target_model_path
        )
        model_config = self.llm.llm_engine.model_config
        self.max_context = int(model_config.max_model_len)
        self.dtype = str(model_config.dtype).removeprefix("torch.")
        self.device = "cuda"

    def generate(
        self, prompts: list[list[int]], budgets: list[int], seeds: list[int]
    ) -> list[Reply]:
        params = [
            self.vllm.SamplingParams(**sampling_kwargs(self.config, budget, seed, self.stop_ids))
            for budget, seed in zip(budgets, seeds)
        ]
        requests: Any = [{"prompt_token_ids": ids} for ids in prompts]
        try:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        except Exception as e:
            raise engine.engine_error(e, self.vllm, FLAG, "failed while generating") from None
        # token_ids may end with the stop token (vLLM keeps it there): cut it off.
        return [
            split_at_stop(list(out.outputs[0].token_ids), budget, self.stop_ids)
            for out, budget in zip(outputs, budgets)
        ]

    def close(self) -> None:
        llm, self.llm = self.llm, None
        engine.shutdown(llm)
