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

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import ValidationError

from speculators.config.base import error_text, shell_command
from speculators.config.train import TrainConfig
from speculators.errors import UserInputError

TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun in every worker


def under_torchrun(env: Mapping[str, str] | None = None) -> bool:
    # os.environ is looked up per call: a default bound at import goes stale when a library
    # rebinds os.environ (seen in the test suite after HF datasets' worker processes).
    return TORCHRUN_ENV in (os.environ if env is None else env)


def visible_gpu_count(env: Mapping[str, str], listed: int) -> int:
    """GPUs this node may use: CUDA_VISIBLE_DEVICES when set (an empty value hides all), else
    `listed`, the GPUs the driver lists."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return listed
    return len([d for d in visible.split(",") if d.strip()])


def nvidia_smi_gpus() -> int:
    """The GPUs `nvidia-smi -L` lists; 0 where it is missing or fails."""
    try:
        proc = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in proc.stdout.splitlines())


def gpu_count(env: Mapping[str, str]) -> int:
    """GPUs this node may use, without importing torch: CUDA_VISIBLE_DEVICES when set, else
    what `nvidia-smi -L` lists, else 0 (one process then; set CUDA_VISIBLE_DEVICES where
    GPUs have no nvidia-smi)."""
    return visible_gpu_count(env, 0 if "CUDA_VISIBLE_DEVICES" in env else nvidia_smi_gpus())


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


def torchrun_command(
    config_file: Path,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The `python -m torch.distributed.run` line that runs the workers."""
    cmd = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1 and not rdzv_endpoint:
        cmd += ["--standalone"]
    else:
        # torchrun's own c10d rendezvous; the id only has to agree between the nodes, which
        # run the same command.
        run_id = hashlib.sha256(f"{rdzv_endpoint}|{config_file.name}".encode()).hexdigest()[:12]
        cmd += [
            "--nnodes",
            str(nnodes),
            "--node-rank",
            str(node_rank),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            str(rdzv_endpoint),
            "--rdzv-id",
            f"speculators-{run_id}",
        ]
    return cmd + ["-m", "speculators", "train", "--config", str(config_file)]


@contextlib.contextmanager
def config_file(config: TrainConfig) -> Iterator[Path]:
    """`config` as a JSON file the workers read, for as long as they run. Not in --save-path:
    a run refused over its inputs leaves that directory as it was (the workers record the
    config there with each checkpoint)."""
    fd, name = tempfile.mkstemp(prefix="speculators-train-", suffix=".json")
    path = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(config.model_dump(mode="json"), f, indent=2)
        yield path
    finally:
        path.unlink(missing_ok=True)


def _not_a_reported_exit(record: logging.LogRecord) -> bool:
    """torchrun logs `failed (exitcode: N)` for a worker that exited with an error it printed
    itself; kept for signals (negative codes), which nothing else reports."""
    code = record.args[0] if isinstance(record.args, tuple) and record.args else None
    return not (
        str(record.msg).startswith("failed (exitcode") and isinstance(code, int) and code > 0
    )


def run_torchrun(cmd: list[str]) -> int:
    """Run `cmd` (a `torchrun_command`) with torchrun's agent in this process; returns 0 or the
    exit code of the first worker that failed."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(
        _not_a_reported_exit
    )
    try:
        run(parse_args(cmd[cmd.index("torch.distributed.run") + 1 :]))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode > 0:
            return failure.exitcode  # the worker printed why
        print(
            f"error: training process {rank} was killed by {failure.signal_name()}; a rerun "
            "resumes from the newest complete epoch.",
            file=sys.stderr,
        )
        return 128 - failure.exitcode
    except SignalException as e:  # Ctrl-C or a kill: torchrun stopped the workers
        return 128 + int(e.sigval)
    return 0


def launch(config: TrainConfig, env: Mapping[str, str] | None = None) -> int | None:
    """Run `config`'s workers under torchrun and return their exit code; None when this
    process is a torchrun worker itself (the caller trains)."""
    env = os.environ if env is None else env
    if under_torchrun(env):
        return None
    config = resolve(config, env)
    assert config.nproc_per_node is not None
    with config_file(config) as path:
        cmd = torchrun_command(
            path, config.nproc_per_node, config.nnodes, config.node_rank, config.rdzv_endpoint
        )
        total = config.nproc_per_node * config.nnodes
        plural = "es" if total > 1 else ""
        print(f"starting {total} process{plural}: {shell_command(cmd)}", file=sys.stderr)
        sys.stderr.flush()
        return run_torchrun(cmd)
