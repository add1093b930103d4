"""Running a command's workers under torchrun, decided without importing torch (this module
imports the standard library and pydantic only). Used by `speculators train` (always torchrun)
and `speculators datagen --nproc-per-node N` (torchrun when N > 1 or several nodes).

The launcher writes the resolved config to a temporary JSON file and runs

    python -m torch.distributed.run --nproc-per-node N --standalone \\
        -m speculators COMMAND --config FILE

with torchrun's agent in this process (what an exec would give, plus the workers' exit code as
the command's and no torchrun traceback over their one-paragraph error). Each worker runs the
same command, finds TORCHELASTIC_RUN_ID set, and does its share. The environment
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
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn

from pydantic import BaseModel

TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun in every worker
# The command line the user typed, handed to the workers (they run `... --config FILE`), so that
# what they record (data_config.json's reproducibility.command) is the user's command.
COMMAND_ENV = "SPECULATORS_COMMAND_LINE"


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


def torchrun_command(
    config_file: Path,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    python: str = sys.executable,
    command: str = "train",
) -> list[str]:
    """The `python -m torch.distributed.run` line that runs `speculators COMMAND`'s workers."""
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
    return cmd + ["-m", "speculators", command, "--config", str(config_file)]


@contextlib.contextmanager
def config_file(config: BaseModel, prefix: str) -> Iterator[Path]:
    """`config` as a JSON file the workers read, for as long as they run. A temporary file, not
    in the command's output dir: a run refused over its inputs leaves that dir as it was."""
    fd, name = tempfile.mkstemp(prefix=f"speculators-{prefix}-", suffix=".json")
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


def run_torchrun(cmd: list[str], what: str = "training") -> int:
    """Run `cmd` (a `torchrun_command`) with torchrun's agent in this process; returns 0 or the
    exit code of the first worker that failed."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
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
            f"error: {what} process {rank} was killed by {failure.signal_name()}; a rerun "
            "resumes where it stopped.",
            file=sys.stderr,
        )
        return 128 - failure.exitcode
    except SignalException as e:  # Ctrl-C or a kill: torchrun stopped the workers
        return 128 + int(e.sigval)
    except RendezvousError as e:  # before any worker started
        print(f"error: {_rendezvous_failed(cmd, e)}", file=sys.stderr)
        return 2
    return 0


def _rendezvous_failed(cmd: list[str], e: BaseException) -> str:
    """The one message for processes that could not meet (torchrun's rendezvous)."""
    cause = e.__cause__ or e.__context__
    why = f"{e.__class__.__name__}: {str(e).rstrip('.')}" + (
        f" ({cause.__class__.__name__}: {str(cause).rstrip('.')})" if cause is not None else ""
    )
    if "--rdzv-endpoint" not in cmd:
        return f"the processes could not meet on this machine: {why}."
    endpoint = cmd[cmd.index("--rdzv-endpoint") + 1]
    return (
        f"--rdzv-endpoint {endpoint}: the processes could not meet there: {why}. Give HOST:PORT "
        "of the first node (--node-rank 0), a name every node resolves and a port free on it, "
        "and start the same command on every node."
    )


def exit_code(e: SystemExit) -> int:
    """The process exit code Python gives `raise e` (None: 0, a message: 1)."""
    return e.code if isinstance(e.code, int) else 0 if e.code is None else 1


def run_worker(main: Callable[[], object]) -> NoReturn:
    """Run a torchrun worker's command (`main`) and end the process with its exit code, output
    flushed, without Python's interpreter shutdown.

    Why: a datagen worker sometimes died at that shutdown, after its files were written and its
    process group destroyed (SIGABRT "terminate called without an active exception", or
    SIGSEGV; no Python frame left; 4 runs in about 65 of the 2-process test run, CPU/gloo), and
    torchrun reports any worker that dies as the whole command failing. A worker has nothing
    left to do at shutdown: its files are renamed into place and fsynced as they are written,
    and its process group is destroyed by the command itself."""
    code = 0
    try:
        main()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = exit_code(e)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
