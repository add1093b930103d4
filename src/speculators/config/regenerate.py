"""Configuration of `speculators regenerate`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from speculators.config.base import StrictModel


class RegenerateConfig(StrictModel):
    """Rewrite every assistant turn of a chat data set as the verifier's own reply."""

    target_model_path: str = Field(
        ..., description="Verifier model: a local Hugging Face model dir or a cached hub name."
    )
    train_data_path: str = Field(
        ...,
        description="Conversations to regenerate: `sharegpt`, `ultrachat`, a hub dataset name, or "
        "a local .json/.jsonl file (anything datagen reads).",
    )
    output_path: Path = Field(
        Path("./regenerated.jsonl"),
        description="The regenerated conversations (.jsonl, ShareGPT records; datagen's "
        "--train-data-path); provenance goes beside it in OUTPUT_PATH.meta.json.",
    )
    max_samples: int | None = Field(
        None,
        gt=0,
        description="Regenerate at most this many conversations: the first of datagen's seeded "
        "shuffle (same --seed, same --max-samples = the same conversations).",
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed of the shuffle that picks conversations (datagen's) and of sampling.",
    )
    max_new_tokens: int = Field(1024, gt=0, description="Longest reply, in tokens.")
    temperature: float = Field(
        0.0, ge=0, description="Sampling temperature of the replies (0: greedy, deterministic)."
    )
    seq_length: int | None = Field(
        None,
        gt=0,
        description="Stop a conversation once it reaches this many tokens (datagen's "
        "--seq-length cuts there anyway; a reply's budget shrinks to fit). Default: all turns.",
    )
    batch_size: int = Field(16, gt=0, description="Replies generated together.")
    backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="Engine: vllm when installed and a GPU is present, else transformers."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="transformers backend: where to run (auto: cuda if available)."
    )
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field(
        "auto",
        description="transformers backend compute dtype (auto: bfloat16 on GPU, float32 on CPU).",
    )
    tensor_parallel_size: int = Field(
        1, gt=0, description="GPUs per model replica (vllm backend only)."
    )
    gpu_memory_utilization: float = Field(
        0.8, gt=0, le=1, description="Share of GPU memory vllm may use (vllm backend only)."
    )
    cache_dir: Path | None = Field(
        None, description="Cache for downloaded datasets (default: the Hugging Face cache)."
    )
    overwrite: bool = Field(
        False,
        description="Replace an --output-path written with other settings instead of refusing.",
    )

    @model_validator(mode="after")
    def _check(self) -> RegenerateConfig:
        if self.output_path.suffix != ".jsonl":
            raise ValueError(
                f"--output-path {self.output_path}: the regenerated conversations are written as "
                "JSON lines; give the file a .jsonl suffix."
            )
        if 0 < self.temperature < 1e-3:
            raise ValueError(
                f"--temperature {self.temperature} is too close to 0 for stable sampling; use 0 "
                "for greedy replies or a value of at least 0.001."
            )
        return self
