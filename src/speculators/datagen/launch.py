"""How `speculators datagen` runs: in this process, or with `--nproc-per-node N` (N > 1) or
several nodes as N torchrun workers that share the samples (datagen.shards), started the way
`speculators train` starts its workers (speculators.launcher).

The default process count is one per visible GPU with the transformers backend on GPUs, and 1
otherwise (CPU; vllm, which spreads one engine over GPUs with --tensor-parallel-size).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from speculators.config import DatagenConfig
from speculators.config.base import shell_command
from speculators.config.datagen import VLLM_PROCESSES
from speculators.config.processes import too_many_processes
from speculators.errors import UserInputError
from speculators.launcher import (
    COMMAND_ENV,
    config_file,
    gpu_count,
    run_torchrun,
    torchrun_command,
    under_torchrun,
)
from speculators.models.vllm import choose_backend


def resolve_nproc(config: DatagenConfig, env: Mapping[str, str]) -> int:
    """Processes on this node, as asked or by default; checked against the GPUs they need."""
    backend, _ = choose_backend(config.backend)
    gpus = 0 if config.device == "cpu" else gpu_count(env)
    on_gpus = backend == "transformers" and (
        config.device == "cuda" or (config.device == "auto" and gpus > 0)
    )
    nproc = config.nproc_per_node
    if nproc is None:
        nproc = max(gpus, 1) if on_gpus else 1
    if backend == "vllm" and (nproc > 1 or config.nnodes > 1):
        raise UserInputError(f"--backend auto chose vllm. {VLLM_PROCESSES}")
    error = too_many_processes(nproc, gpus) if on_gpus else None
    if error:
        raise UserInputError(error)
    return nproc


def launch(config: DatagenConfig, command: str, env: Mapping[str, str] | None = None) -> int | None:
    """Start `config`'s torchrun workers and return their exit code; None when this process
    computes the samples itself (one process, or a torchrun worker already)."""
    env = os.environ if env is None else env
    if under_torchrun(env):
        return None
    nproc = resolve_nproc(config, env)
    if nproc == 1 and config.nnodes == 1:
        return None
    config = config.model_copy(update={"nproc_per_node": nproc})
    with config_file(config, "datagen") as path:
        cmd = torchrun_command(
            path,
            nproc,
            config.nnodes,
            config.node_rank,
            config.rdzv_endpoint,
            command="datagen",
        )
        print(f"starting {nproc * config.nnodes} processes: {shell_command(cmd)}", file=sys.stderr)
        sys.stderr.flush()
        os.environ[COMMAND_ENV] = command  # what the workers record as the command
        try:
            return run_torchrun(cmd, what="datagen")
        finally:
            os.environ.pop(COMMAND_ENV, None)
