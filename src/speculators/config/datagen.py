"""Configuration of `speculators datagen`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from speculators.config.processes import NodesConfig

VLLM_PROCESSES = (
    "--nproc-per-node/--nnodes: the vllm backend runs one engine per datagen command, which "
    "uses several GPUs through --tensor-parallel-size. For data parallelism over GPUs use "
    "--backend transformers --nproc-per-node N (one verifier copy per GPU)."
)


class DatagenConfig(NodesConfig):
    """Run the verifier over chat data and store its hidden states, loss masks and token counts."""

    target_model_path: str = Field(
        ..., description="Verifier model: a local Hugging Face model dir or a cached hub name."
    )
    train_data_path: str = Field(
        ...,
        description="Data: `sharegpt`, `ultrachat`, a hub dataset name, or a local .json/.jsonl "
        "file of conversations.",
    )
    output_dir: Path = Field(
        Path("./training_data"), description="Directory for data_{idx}.pt and data_config.json."
    )
    max_samples: int | None = Field(
        None, description="Use at most this many conversations (after the seeded shuffle)."
    )
    seq_length: int = Field(
        2048, gt=0, description="Truncate each conversation to this many tokens."
    )
    cache_dir: Path | None = Field(
        None,
        description="Cache for downloaded datasets and tokenized data (default: the Hugging Face "
        "datasets cache).",
    )
    layer_ids: list[int] | None = Field(
        None,
        description="Decoder layers to store, e.g. --layer-ids 2 16 29 31 (aux layers, then the "
        "last layer). Default: [2, n//2, n-3, n-1].",
    )
    tensor_parallel_size: int = Field(
        1, gt=0, description="GPUs per model replica (vllm backend only)."
    )
    batch_size: int = Field(8, gt=0, description="Conversations per forward pass.")
    seed: int = Field(
        0, ge=0, description="Seed of the shuffle that picks and orders conversations."
    )
    token_freq_path: Path = Field(
        Path("./token_freq.pt"),
        description="Where to write token counts over assistant tokens (input of `vocab`).",
    )
    backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="Engine for the verifier: vllm when installed, else transformers."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="transformers backend: where to run (auto: cuda if available)."
    )
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field(
        "auto",
        description="transformers backend compute dtype (auto: bfloat16 on GPU, float32 on CPU).",
    )
    no_compile: bool = Field(
        False,
        description="Run the verifier eagerly: transformers backend on GPUs, its decoder layers "
        "without torch.compile (compiling is about 1.2x faster, for ~20-40 s before the first "
        "batches); vllm backend, `enforce_eager` (no compile, no CUDA graphs).",
    )
    hidden_states_dtype: Literal["bf16", "fp8"] = Field(
        "bf16",
        description="How hidden states are stored: bf16, or fp8 (e4m3 with one scale per token "
        "and layer: half the bytes on disk and in the training loader). Training reads both.",
    )
    gpu_memory_utilization: float = Field(
        0.8, gt=0, le=1, description="Share of GPU memory vllm may use (vllm backend only)."
    )
    nproc_per_node: int | None = Field(
        None,
        ge=1,
        description="Processes on this node, each computing its share of the samples into the "
        "same --output-dir (default: one per visible GPU with the transformers backend, else 1). "
        "More than one runs under torchrun; --nnodes/--node-rank/--rdzv-endpoint as for train.",
    )
    # --nnodes, --node-rank, --rdzv-endpoint: NodesConfig
    overwrite: bool = Field(
        False,
        description="Replace samples in --output-dir (and the --token-freq-path file) that were "
        "written with a different config instead of refusing.",
    )

    @model_validator(mode="after")
    def _check(self) -> DatagenConfig:
        if self.max_samples is not None and self.max_samples <= 0:
            raise ValueError(
                f"--max-samples must be a positive number of conversations (got "
                f"{self.max_samples}); omit it to use the whole data set."
            )
        if self.backend == "vllm" and ((self.nproc_per_node or 1) > 1 or self.nnodes > 1):
            raise ValueError(VLLM_PROCESSES)
        return self

    @field_validator("layer_ids")
    @classmethod
    def _empty_is_auto(cls, v: list[int] | None) -> list[int] | None:
        return v or None
