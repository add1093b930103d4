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


def test_bench_packing_runs():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_packing.py"), "--num-samples", "2000",
         "--total-seq-len", "2048"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["first-fit"]["rows"] <= result["next-fit"]["rows"]


def test_heldout_sharegpt_prompts_avoid_the_training_region():
    """The held-out builder skips records whose id, conversation or first prompt occurs among
    the first `train_region` records of the seeded permutation (where training reads)."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location(
        "build_heldout", ROOT / "benchmarks" / "heldout" / "build_sharegpt_heldout.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def record(chat: str, part: int, text: str) -> dict:
        return {"id": f"{chat}_{part}", "conversations": [{"from": "human", "value": text}]}

    n = 40
    records = [record(f"c{i}", 0, f"question {i}") for i in range(n)]
    order = np.random.default_rng(0).permutation(n).tolist()
    first, second, third = order[0], order[1], order[2]  # in the training region
    # the first records the builder looks at (the end of the permutation) repeat the region:
    records[order[-1]] = record("other", 0, f"question {first}")  # the same prompt
    records[order[-2]] = record(f"c{second}", 7, "a later part of a trained chat")
    records[order[-3]] = {"id": "x_0", "conversations": [{"from": "gpt", "value": "no prompt"}]}
    records[order[-4]] = record(f"c{third}", 0, "the same id as a trained record")
    kept = module.build(records, seed=0, train_region=10, num_prompts=5)
    assert [k["id"] for k in kept] == [records[i]["id"] for i in order[-9:-4][::-1]]
    region = [records[i] for i in order[:10]]
    assert not {k["id"] for k in kept} & {r["id"] for r in region}
    assert not {k["prompt"] for k in kept} & {r["conversations"][0]["value"] for r in region}
    assert module.build(records, 0, 10, 5) == kept  # deterministic
