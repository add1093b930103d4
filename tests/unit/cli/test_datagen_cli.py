"""The `speculators datagen` flag set is pinned: the reference flags, spelled as it spells them."""

from __future__ import annotations

import typer.main

from speculators.cli import app
from speculators.config import DatagenConfig

REFERENCE_FLAGS = {
    "--target-model-path", "--train-data-path", "--output-dir", "--max-samples", "--seq-length",
    "--cache-dir", "--layer-ids", "--tensor-parallel-size", "--batch-size", "--seed",
    "--token-freq-path",
}  # fmt: skip
OURS = {
    "--backend",
    "--device",
    "--dtype",
    "--gpu-memory-utilization",
    "--hidden-states-dtype",
    "--nproc-per-node",
    "--nnodes",
    "--node-rank",
    "--rdzv-endpoint",
    "--no-compile",
    "--overwrite",
}


def test_flag_set_is_pinned():
    command = typer.main.get_command(app).commands["datagen"]
    flags = {opt for p in command.params for opt in p.opts if opt.startswith("--")}
    assert flags == REFERENCE_FLAGS | OURS | {"--config"}
    # Every flag but --config (a file of them) is a DatagenConfig field, so Python callers get
    # the same options.
    fields = {f[2:].replace("-", "_") for f in flags - {"--config"}}
    assert fields == set(DatagenConfig.model_fields)


def test_reference_defaults():
    config = DatagenConfig(target_model_path="m", train_data_path="sharegpt")
    assert config.seq_length == 2048 and str(config.token_freq_path) == "token_freq.pt"
    assert config.seed == 0 and config.tensor_parallel_size == 1 and config.layer_ids is None
    assert config.gpu_memory_utilization == 0.8
