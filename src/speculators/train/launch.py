"""How `speculators train` runs: always as torchrun workers (1 or N processes, CPU or GPU, one
node or many), decided without importing torch (this module imports the standard library and
the pydantic config only).

`speculators train` validates its flags into a TrainConfig and calls `launch`. Outside torchrun
it fills in the process count (GPUs counted without torch: `gpu_count`), validates the config
again with it, writes it to a temporary JSON file and runs

    python -m torch.distributed.run --nproc-per-node N --standalone \\
        -m speculators train --config FILE

with torchrun's agent in this process (what an exec would give, plus the workers' exit code as
this command's and no torchrun traceback over their one-paragraph error). Each worker runs the
same command, finds TORCHELASTIC_RUN_ID set, and trains (train.run.run_train). The environment
(CUDA_VISIBLE_DEVICES, NCCL_*) passes through untouched.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from pydantic import ValidationError

from speculators.config.base import error_text, shell_command
from speculators.config.train import TrainConfig
from speculators.errors import UserInputError
from speculators.launcher import (
    TORCHRUN_ENV,
    config_file,
    gpu_count,
    nvidia_smi_gpus,
    run_torchrun,
    torchrun_command,
    under_torchrun,
    visible_gpu_count,
)

__all__ = [
    "TORCHRUN_ENV",
    "gpu_count",
    "launch",
    "nvidia_smi_gpus",
    "resolve",
    "resolve_nproc",
    "run_torchrun",
    "torchrun_command",
    "under_torchrun",
    "visible_gpu_count",
    "worker_config",
]


def resolve_nproc(requested: int | None, device: str, gpu_count: int) -> int:
    """Processes on this node: as asked, else one per visible GPU (1 on CPU)."""
    if requested is not None:
        return requested
    return max(1, gpu_count) if device != "cpu" else 1


def _node_gpus(config: TrainConfig, env: Mapping[str, str]) -> int:
    return 0 if config.device == "cpu" else gpu_count(env)


def _with_processes(config: TrainConfig, nproc: int, gpus: int) -> TrainConfig:
    """`config` with `nproc` processes on this node, validated again knowing this node's GPUs
    (TrainConfig's validator holds every rule between processes, GPUs and --rows-per-step)."""
    values = config.model_dump() | {"nproc_per_node": nproc}
    try:
        return TrainConfig.model_validate(values, context={"visible_gpus": gpus})
    except ValidationError as e:
        raise UserInputError("; ".join(error_text(err) for err in e.errors())) from None


def resolve(config: TrainConfig, env: Mapping[str, str]) -> TrainConfig:
    """The config the workers get: this node's process count filled in and checked."""
    gpus = _node_gpus(config, env)
    return _with_processes(config, resolve_nproc(config.nproc_per_node, config.device, gpus), gpus)


def worker_config(config: TrainConfig, env: Mapping[str, str] | None = None) -> TrainConfig:
    """The config a torchrun worker trains with. `launch` wrote it with the processes it
    started; a torchrun line of the user's own (`torchrun ... -m speculators train <flags>`)
    leaves them out: torchrun's count is taken and checked as `launch` checks its own."""
    env = os.environ if env is None else env
    world = int(env["WORLD_SIZE"])
    if config.nproc_per_node is None:
        config = _with_processes(config, int(env["LOCAL_WORLD_SIZE"]), _node_gpus(config, env))
    assert config.nproc_per_node is not None
    if config.nproc_per_node * config.nnodes != world:
        raise UserInputError(
            f"torchrun started {world} processes, but --nproc-per-node {config.nproc_per_node} "
            f"x --nnodes {config.nnodes} is {config.nproc_per_node * config.nnodes}: give "
            "`speculators train` the counts torchrun has, or leave them out."
        )
    return config


def launch(config: TrainConfig, env: Mapping[str, str] | None = None) -> int | None:
    """Run `config`'s workers under torchrun and return their exit code; None when this
    process is a torchrun worker itself (the caller trains)."""
    env = os.environ if env is None else env
    if under_torchrun(env):
        return None
    config = resolve(config, env)
    assert config.nproc_per_node is not None
    with config_file(config, "train") as path:
        cmd = torchrun_command(
            path, config.nproc_per_node, config.nnodes, config.node_rank, config.rdzv_endpoint
        )
        total = config.nproc_per_node * config.nnodes
        plural = "es" if total > 1 else ""
        print(f"starting {total} process{plural}: {shell_command(cmd)}", file=sys.stderr)
        sys.stderr.flush()
        return run_torchrun(cmd)
