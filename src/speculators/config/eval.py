"""Configuration of `speculators eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from speculators.config.base import StrictModel


class EvalConfig(StrictModel):
    """Measure a draft's acceptance offline: chain speculative decoding against its verifier."""

    checkpoint_dir: Path = Field(
        ..., description="Draft checkpoint directory written by `speculators train` (SAVE_PATH/N)."
    )
    verifier_name_or_path: str | None = Field(
        None,
        description="Verifier model dir or cached hub name (default: the one the draft names).",
    )
    data_path: str = Field(
        "sharegpt",
        description="Prompts: `sharegpt`, or a local .json/.jsonl file of conversations "
        "(the turns before the first assistant reply are the prompt) or plain prompts.",
    )
    num_prompts: int = Field(20, gt=0, description="Number of prompts to generate from.")
    max_new_tokens: int = Field(128, gt=0, description="Tokens to generate per prompt.")
    num_speculative_tokens: int | None = Field(
        None, gt=0, description="Draft tokens per verifier pass (default: the checkpoint's)."
    )
    temperature: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="0: greedy verification; > 0: rejection sampling at this temperature.",
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed of the prompt choice and of sampling. Prompts come from the end of the "
        "same seeded shuffle datagen takes its conversations from the start of.",
    )
    max_prompt_tokens: int = Field(
        1024, gt=0, description="Skip prompts longer than this many tokens (after the template)."
    )
    output_dir: Path = Field(
        Path("./eval"), description="Directory for eval_results.json and generations.jsonl."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="Where to run (auto: cuda if available)."
    )
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field(
        "auto", description="Verifier and draft compute dtype (auto: bf16 on GPU, fp32 on CPU)."
    )
    engine: Literal["hf", "vllm"] = Field(
        "hf",
        description="hf: chain speculative decoding in this process (CPU or GPU). vllm: the "
        "verifier in vLLM with the draft as its EAGLE-3 speculator and without it, on the same "
        "prompts: vLLM's own acceptance counters and the measured speedup (GPU).",
    )
    concurrency: int = Field(
        1,
        gt=0,
        description="vllm engine: requests decoded at once (vLLM's max_num_seqs). 1 measures the "
        "latency speedup, where speculative decoding gains most.",
    )
    tensor_parallel_size: int = Field(1, gt=0, description="vllm engine: GPUs for the verifier.")
    gpu_memory_utilization: float = Field(
        0.8, gt=0, le=1, description="vllm engine: share of GPU memory vLLM may use."
    )
    overwrite: bool = Field(
        False,
        description="Replace the eval_results.json already in --output-dir (without it, the "
        "command refuses and keeps it).",
    )
    allow_verifier_mismatch: bool = Field(
        False,
        description="Evaluate against a verifier other than the one the draft was trained on "
        "(its fingerprint or embeddings differ), e.g. a fine-tuned or quantized variant.",
    )

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.temperature > 0 and self.temperature < 1e-3:
            raise ValueError(
                f"--temperature {self.temperature} is too close to 0 for stable sampling; use 0 "
                "for greedy decoding or a value of at least 0.001."
            )
        if self.engine == "hf":
            vllm_only = ("concurrency", "tensor_parallel_size", "gpu_memory_utilization")
            fields = type(self).model_fields
            changed = [n for n in vllm_only if getattr(self, n) != fields[n].default]
            if changed:
                raise ValueError(
                    f"--{changed[0].replace('_', '-')} applies to --engine vllm only; add "
                    "--engine vllm or drop the flag."
                )
        elif self.device == "cpu" or self.dtype not in ("auto", "bfloat16"):
            raise ValueError(
                "--engine vllm runs the verifier and draft in bf16 on CUDA GPUs; drop --device "
                "and --dtype, or use --engine hf."
            )
        return self
