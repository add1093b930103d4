"""Configuration of `speculators train` (the reference's flags and defaults, plus a few knobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, model_validator

from speculators.config.processes import NodesConfig, too_many_processes

LOGGERS = ("tensorboard", "wandb", "trackio", "jsonl")


Packing = Literal["first-fit", "next-fit"]


class TrainConfig(NodesConfig):
    """Train an EAGLE-3 draft on datagen's hidden states."""

    verifier_name_or_path: str = Field(
        ..., description="Verifier model dir or cached hub name (the model the data came from)."
    )
    data_path: Path = Field(
        Path("./data"), description="Directory searched recursively for datagen's .pt files."
    )
    save_path: Path = Field(
        Path("./checkpoints"), description="Checkpoints go to SAVE_PATH/{epoch}/."
    )
    epochs: int = Field(20, ge=1, description="Number of passes over the training data.")
    lr: float = Field(1e-4, gt=0, allow_inf_nan=False, description="Peak learning rate of AdamW.")
    no_resume_from_checkpoint: bool = Field(
        False,
        description="Start from scratch (overwriting checkpoints) instead of resuming from the "
        "newest complete epoch in --save-path.",
    )
    logger: str = Field(
        "",
        description="Comma-separated loggers: tensorboard, wandb, trackio, jsonl "
        "(LOG_DIR/RUN_NAME/metrics.jsonl) ('' = console only).",
    )
    total_seq_len: int = Field(
        8192, ge=16, description="Tokens per packed training row (documents are packed)."
    )
    packing: Packing = Field(
        "first-fit",
        description="How documents fill the rows: first-fit (up to 16 rows open at a time, "
        "~99.7% full) or next-fit (a new row whenever the next document does not fit, ~94.6% "
        "full; the packing before 2026-12-01, to reproduce earlier runs).",
    )
    data_format_version: int = Field(
        1, ge=0, le=1, description="Sample file format: 1 (datagen's) or 0 (old format)."
    )
    log_dir: Path = Field(Path("./logs"), description="Where loggers write.")
    run_name: str | None = Field(None, description="Run name shown by the loggers.")
    num_layers: int = Field(1, ge=1, description="Decoder layers in the draft.")
    d2t_path: Path = Field(Path("d2t.npy"), description="Draft-to-target map from `vocab`.")
    t2d_path: Path = Field(Path("t2d.npy"), description="Target-to-draft mask from `vocab`.")
    ttt_steps: int = Field(3, description="Training-time-test steps (draft tokens trained).")
    ttt_step_loss_decay: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="Loss weight of TTT step s is DECAY ** s."
    )
    # Beyond the reference.
    train_lm_head: bool = Field(
        False,
        description="Train the draft's lm_head (initialised from the verifier's rows) instead "
        "of keeping it frozen (see docs/train.md for the measurement behind the default).",
    )
    metrics_every: int = Field(
        10,
        ge=1,
        description="Measure accuracy and the acceptance chain (which need the verifier's "
        "argmax over its full vocab) on every N-th optimizer step; the others compute the loss "
        "only. Validation always measures them.",
    )
    seed: int = Field(0, ge=0, description="Seed for init, data split and shuffling.")
    warmup_steps: int = Field(
        -1, ge=-1, description="Linear LR warmup steps (-1: 5% of all steps)."
    )
    lr_decay: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="LR decay after warmup, down to 10% of --lr."
    )
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False, description="AdamW weight decay.")
    max_grad_norm: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="Gradient clipping norm."
    )
    val_fraction: float = Field(
        0.05, ge=0, lt=1, description="Fraction of samples held out for validation."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="Where to train (auto: cuda if available)."
    )
    attention: Literal["auto", "dense", "flex"] = Field(
        "auto", description="TTT attention: dense mask (CPU) or flex (GPU); auto picks."
    )
    no_compile: bool = Field(
        False,
        description="Run the draft eagerly on GPUs instead of torch.compile'd (compiling fuses "
        "the element-wise work, about 1.3x faster, but costs a minute before the first step).",
    )
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes.")
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="Cap on optimizer steps per epoch (quick runs and tests)."
    )
    rows_per_step: int | None = Field(
        None,
        ge=1,
        description="Global batch: packed rows per optimizer step, split evenly over all "
        "processes (default: one row per process). Same value = same loss curve for any "
        "number of processes.",
    )
    # Processes (torchrun is started for you; see docs/train.md "Processes, GPUs and nodes").
    nproc_per_node: int | None = Field(
        None,
        ge=1,
        description="Training processes on this node (default: every visible GPU; 1 on CPU).",
    )
    # --nnodes, --node-rank, --rdzv-endpoint: NodesConfig
    # Overrides of checks (docs/checks.md).
    allow_verifier_mismatch: bool = Field(
        False,
        description="Train even though data_config.json records a different verifier than "
        "--verifier-name-or-path (its fingerprint differs).",
    )
    allow_missing_samples: bool = Field(
        False,
        description="Train on a data dir with fewer sample files than its data_config.json lists "
        "(samples deleted on purpose, or datagen unfinished).",
    )

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> TrainConfig:
        """Every rule between fields. The launcher (train/launch.py) validates the config again
        once it knows the process count, with this node's GPU count as context
        (`{"visible_gpus": n}`), so the process rules below see the run as it will start."""
        if self.ttt_steps < 1:
            raise ValueError(
                f"--ttt-steps must be at least 1 (got {self.ttt_steps}): step 0 is the draft's "
                "plain prediction; 3 is the usual choice."
            )
        unknown = [name for name in self.logger_names if name not in LOGGERS]
        if unknown:
            raise ValueError(
                f"--logger {self.logger!r}: unknown logger {unknown[0]!r}. Use a comma-separated "
                f"list of {', '.join(LOGGERS)}, or '' for the console only."
            )
        gpus = (info.context or {}).get("visible_gpus")
        if gpus is not None and self.nproc_per_node and self.device != "cpu":
            on_gpus = self.device == "cuda" or gpus > 0  # auto without GPUs: CPU processes
            error = too_many_processes(self.nproc_per_node, gpus) if on_gpus else None
            if error:
                raise ValueError(error)
        if self.rows_per_step and self.nproc_per_node:
            world = self.nproc_per_node * self.nnodes
            if self.rows_per_step % world:
                raise ValueError(
                    f"--rows-per-step {self.rows_per_step} must be a multiple of the number of "
                    f"processes ({world} = --nproc-per-node x --nnodes)."
                )
        return self

    @property
    def logger_names(self) -> list[str]:
        return [name.strip() for name in self.logger.split(",") if name.strip()]
