"""The torchrun re-exec of `speculators train` (stdlib only: decided before torch is imported).

`speculators train` checks its flags, writes the resolved config to SAVE_PATH/train_config.json
and replaces itself with `python -m torch.distributed.run ... -m speculators train --config FILE`.
The workers read the file, so no argv is re-split. The environment (CUDA_VISIBLE_DEVICES, NCCL_*)
passes through untouched.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from speculators.artifacts.atomic import atomic_write_json

CONFIG_FILE_NAME = "train_config.json"
TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun in every worker


def under_torchrun(env: Mapping[str, str] | None = None) -> bool:
    # os.environ is looked up per call: a default bound at import goes stale when a library
    # rebinds os.environ (seen in the test suite after HF datasets' worker processes).
    return TORCHRUN_ENV in (os.environ if env is None else env)


def visible_gpu_count(env: Mapping[str, str], torch_count: int) -> int:
    """GPUs this node may use: CUDA_VISIBLE_DEVICES when set (an empty value hides all)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return torch_count
    ids = [d for d in visible.split(",") if d.strip()]
    return min(len(ids), torch_count) if torch_count else 0


def resolve_nproc(requested: int | None, device: str, gpu_count: int) -> int:
    """Processes on this node: as asked, else one per visible GPU (1 on CPU)."""
    if requested is not None:
        return requested
    return max(1, gpu_count) if device != "cpu" else 1


def should_launch(
    requested_nproc: int | None, nproc: int, nnodes: int, env: Mapping[str, str] | None = None
) -> bool:
    """Start torchrun unless already under it or one plain process is wanted. An explicit
    --nproc-per-node (even 1) always goes through torchrun: one code path for 1..N."""
    if under_torchrun(env):
        return False
    return requested_nproc is not None or nproc > 1 or nnodes > 1


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


def write_config(save_path: Path, values: dict[str, Any]) -> Path:
    """Write the resolved config where every worker (and node, on shared storage) reads it."""
    path = Path(save_path) / CONFIG_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, values)
    return path


def exec_torchrun(cmd: list[str]) -> NoReturn:
    """Replace this process with torchrun (same pid, signals and exit code reach the user)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, dict(os.environ))
