"""`python -m speculators COMMAND ...` in a fresh process, as a user's shell runs it (for the
tests that start real torchrun workers)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_speculators(
    command: str, args: list[str], timeout: int = 240
) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # two workers on a 2-core CI machine
    env.pop("TORCHELASTIC_RUN_ID", None)
    return subprocess.run(
        [sys.executable, "-m", "speculators", command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
