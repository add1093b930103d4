"""`speculators train` run through CliRunner (or killpoint's driver): the torchrun agent's part
for one process done in this process, so that a test sees the worker's output and exit code in
its own process and can kill it at a chosen point. The worker's side is the product's own: the
torchrun environment, then the command the agent would start (`speculators train --config FILE`).

Real torchrun (separate processes, gloo): tests/integration/test_train_torchrun.py (1 process)
and tests/integration/test_train_distributed.py (2).
"""

from __future__ import annotations

import os
import socket

from speculators import launcher
from speculators.train import launch

REAL = launch.run_torchrun


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker_here(cmd: list[str]) -> int:
    """Stands in for `launch.run_torchrun(cmd)` when `cmd` starts one process."""
    if cmd[cmd.index("--nproc-per-node") + 1] != "1":
        return REAL(cmd)
    from speculators.cli import main

    env = {
        launch.TORCHRUN_ENV: "in-this-process", "RANK": "0", "LOCAL_RANK": "0",
        "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
    }  # fmt: skip
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        main(cmd[cmd.index("speculators") + 1 :])
    except SystemExit as e:
        return launcher.exit_code(e)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return 0


def install() -> None:
    launch.run_torchrun = run_worker_here  # type: ignore[assignment]
