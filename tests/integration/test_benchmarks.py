"""The CPU-sized benchmarks run to the end (their numbers are not checked: timings never are)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_run_all_cpu_runs_both_benchmarks(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--cpu", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert any(line.startswith("pipelined:") for line in results["datagen"])
    train = json.loads(results["train"][-1])
    assert train["tokens_per_s"] > 0 and train["gflop_per_token"] > 0
