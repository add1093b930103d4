"""The whole CLI surface, pinned: a flag is added or renamed on purpose, never by accident.

The reference's flags (SPEC §1) must all be present under their reference spelling."""

from __future__ import annotations

import typer.main

from speculators.cli import app

COMMON = {"--help", "-h"}
FLAGS = {
    "datagen": {
        "--backend", "--batch-size", "--cache-dir", "--config", "--device", "--dtype",
        "--gpu-memory-utilization", "--hidden-states-dtype", "--layer-ids", "--max-samples",
        "--nnodes", "--no-compile", "--node-rank", "--nproc-per-node", "--output-dir",
        "--rdzv-endpoint",
        "--overwrite", "--seed", "--seq-length", "--target-model-path", "--tensor-parallel-size",
        "--token-freq-path", "--train-data-path",
    },
    "regenerate": {
        "--backend", "--batch-size", "--cache-dir", "--device", "--dtype",
        "--gpu-memory-utilization", "--max-new-tokens", "--max-samples", "--output-path",
        "--overwrite", "--seed", "--seq-length", "--target-model-path", "--temperature",
        "--tensor-parallel-size", "--train-data-path",
    },
    "vocab": {
        "--allow-unrecorded-token-freq", "--draft-vocab-size", "--output-path", "--overwrite",
        "--target-model-path", "--target-vocab-size", "--token-freq-path",
    },
    "train": {
        "--allow-missing-samples", "--allow-verifier-mismatch", "--attention", "--config",
        "--d2t-path", "--data-format-version", "--data-path",
        "--device", "--epochs", "--log-dir", "--logger", "--lr", "--lr-decay", "--max-grad-norm",
        "--max-steps-per-epoch", "--metrics-every", "--nnodes", "--no-compile",
        "--no-resume-from-checkpoint", "--node-rank", "--packing", "--train-lm-head",
        "--nproc-per-node", "--num-layers", "--num-workers", "--rdzv-endpoint", "--rows-per-step",
        "--run-name", "--save-path", "--seed", "--t2d-path", "--total-seq-len",
        "--ttt-step-loss-decay", "--ttt-steps", "--val-fraction", "--verifier-name-or-path",
        "--warmup-steps", "--weight-decay",
    },
    "eval": {
        "--allow-verifier-mismatch", "--concurrency", "--data-path", "--device", "--dtype",
        "--engine", "--gpu-memory-utilization", "--max-new-tokens", "--max-prompt-tokens",
        "--num-prompts", "--num-speculative-tokens", "--output-dir", "--overwrite", "--seed",
        "--temperature", "--tensor-parallel-size", "--verifier-name-or-path",
    },
    "pipeline": {
        "--config", "--from-stage", "--output-dir", "--overwrite", "--set",
        "--target-model-path", "--to-stage", "--train-data-path",
    },
}  # fmt: skip

# SPEC §1: the reference flag names users already know.
REFERENCE = {
    "datagen": {"--target-model-path", "--train-data-path", "--output-dir", "--max-samples",
                "--seq-length", "--cache-dir", "--layer-ids", "--tensor-parallel-size",
                "--batch-size", "--token-freq-path"},
    "vocab": {"--token-freq-path", "--draft-vocab-size", "--target-vocab-size",
              "--target-model-path", "--output-path"},
    "train": {"--verifier-name-or-path", "--data-path", "--save-path", "--epochs", "--lr",
              "--no-resume-from-checkpoint", "--logger", "--total-seq-len",
              "--data-format-version", "--log-dir", "--run-name", "--num-layers", "--d2t-path",
              "--t2d-path", "--ttt-steps", "--ttt-step-loss-decay"},
}  # fmt: skip


def flags_of(name: str) -> set[str]:
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    names = {o for p in command.params for o in (*p.opts, *getattr(p, "secondary_opts", []))}
    return {o for o in names if o.startswith("-")} - COMMON


def test_commands_and_flags_are_pinned():
    assert set(typer.main.get_command(app).commands) == set(FLAGS)  # type: ignore[attr-defined]
    for name, expected in FLAGS.items():
        assert flags_of(name) == expected, name


def test_reference_flags_keep_their_spelling():
    for name, expected in REFERENCE.items():
        assert expected <= flags_of(name), name
