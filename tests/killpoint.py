"""Kills at chosen moments, for the tests that a rerun after `kill -9` finishes the job.

`run_killed` runs the CLI in a child process that sends itself SIGKILL at the n-th os.replace /
os.rename (Path.rename uses it) whose destination matches a pattern, before or after the
operation: a real kill at a known point, no test hooks in the product code.

`Freezer` does the same in-process for enumerating every point cheaply: before the chosen
operation it copies the directory as it is on disk at that moment and raises `Killed` (which
nothing catches); the copy is what a rerun after a kill there would find.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

DRIVER = r"""
import json, os, re, signal, sys
spec = json.loads(sys.argv[1])
seen = [0]
def wrap(name):
    real = getattr(os, name)
    def op(src, dst, *args, **kwargs):
        hit = name in spec["ops"] and re.search(spec["match"], str(dst))
        if hit:
            seen[0] += 1
            hit = seen[0] == spec["nth"]
        if hit and spec["when"] == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(src, dst, *args, **kwargs)
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(os, name, op)
for name in ("replace", "rename"):
    wrap(name)
sys.path.insert(0, spec["tests"])
import torchrun_here  # the worker trains in this process, where the kill is armed
torchrun_here.install()
from speculators.cli import main
sys.argv = ["speculators", *spec["args"]]
main()
"""


def run_killed(
    args: list[str], match: str, nth: int = 1, when: str = "after", ops=("replace", "rename")
) -> subprocess.CompletedProcess:
    """`speculators ARGS` in a child killed -9 at the n-th matching rename; must die there."""
    spec = {"args": [str(a) for a in args], "match": match, "nth": nth, "when": when}
    spec["ops"], spec["tests"] = list(ops), str(Path(__file__).parent)
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, f"not killed (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return proc


class Killed(BaseException):
    """Stands for SIGKILL: no `except Exception` catches it."""


class Freezer:
    """Counts the renames and replaces into `root` (destination's parent is `root`) and, at
    number `kill_at`, copies `root` to `frozen` before the operation and raises Killed."""

    def __init__(self, root: Path, kill_at: int | None = None, frozen: Path | None = None):
        self.root, self.kill_at, self.frozen = root, kill_at, frozen
        self.count = 0
        self.ops: list[str] = []

    def install(self, monkeypatch) -> Freezer:
        for name in ("replace", "rename"):
            real = getattr(os, name)

            def op(src, dst, *args, _real=real, **kwargs):
                if Path(dst).parent == self.root:
                    self.count += 1
                    self.ops.append(f"{Path(src).name} -> {Path(dst).name}")
                    if self.count == self.kill_at:
                        assert self.frozen is not None
                        shutil.copytree(self.root, self.frozen, symlinks=True)
                        raise Killed
                return _real(src, dst, *args, **kwargs)

            monkeypatch.setattr(os, name, op)
        return self
