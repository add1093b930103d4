"""`speculators regenerate` through the CLI with each backend on the same conversations: wall time
and tokens/s of each, how many regenerated conversations the backends agree on, and a kill -9 in
the middle of a run of the first backend, resumed, compared byte for byte with its uninterrupted
output.

    # one GPU, vLLM installed, SmolLM2 converted to a HF dir, ShareGPT rows:
    python benchmarks/bench_regenerate.py --model ./SmolLM2-135M-Instruct --data sharegpt.json \\
        --backends vllm transformers --max-samples 128 --max-new-tokens 256 --kill-after 40 \\
        --work-dir /tmp/regen
    # CPU smoke run:
    python benchmarks/bench_regenerate.py --model ./SmolLM2-135M-Instruct --data convs.jsonl \\
        --backends transformers --max-samples 8 --max-new-tokens 16 --work-dir /tmp/regen

Greedy (temperature 0) replies of two engines in bf16 can part where their kernels round a
near-tie differently, so agreement is reported, not required.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


def command(args: argparse.Namespace, backend: str, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "speculators", "regenerate",
        "--target-model-path", str(args.model), "--train-data-path", str(args.data),
        "--output-path", str(out), "--max-samples", str(args.max_samples),
        "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
        "--backend", backend, "--gpu-memory-utilization", str(args.gpu_memory_utilization),
        *(["--seq-length", str(args.seq_length)] if args.seq_length else []),
    ]  # fmt: skip


def run(args: argparse.Namespace, backend: str) -> dict:
    out = args.work_dir / f"{backend}.jsonl"
    for stale in (out, out.with_name(out.name + ".meta.json")):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(command(args, backend, out), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"regenerate --backend {backend} failed:\n{proc.stdout}\n{proc.stderr}")
    rate = re.search(r"throughput\s*│\s*([\d,.]+) tokens/s", proc.stdout)
    generated = re.search(r"tokens generated\s*│\s*([\d,]+)", proc.stdout)
    return {
        "backend": backend,
        "tokens_per_s": float(rate.group(1).replace(",", "")) if rate else None,
        "generated_tokens": int(generated.group(1).replace(",", "")) if generated else None,
        "wall_s_incl_startup": round(wall, 1),
        "output": str(out),
    }


def replies(path: Path) -> list[list[str]]:
    """Each record's assistant turns, in order."""
    return [
        [t["value"] for t in json.loads(line)["conversations"] if t["from"] == "gpt"]
        for line in path.read_text().splitlines()
    ]


def agreement(a: Path, b: Path) -> dict:
    ra, rb = replies(a), replies(b)
    return {
        "conversations": [len(ra), len(rb)],
        "all_replies_identical": sum(x == y for x, y in zip(ra, rb)),
        "first_reply_identical": sum(bool(x) and x[:1] == y[:1] for x, y in zip(ra, rb)),
    }


def kill_and_resume(args: argparse.Namespace, backend: str, uninterrupted: Path) -> dict:
    """kill -9 once the first chunk is committed (or after --kill-after seconds), run the same
    command again, compare the files."""
    out = args.work_dir / f"{backend}-killed.jsonl"
    meta = out.with_name(out.name + ".meta.json")
    for stale in (out, meta):
        stale.unlink(missing_ok=True)
    cmd = command(args, backend, out)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.perf_counter()
    while proc.poll() is None and time.perf_counter() - start < args.kill_after:
        if meta.is_file() and json.loads(meta.read_text())["progress"]["conversations_done"]:
            break
        time.sleep(0.05)
    finished_first = proc.poll() is not None
    if not finished_first:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = round(time.perf_counter() - start, 1)
    at_kill = json.loads(meta.read_text())["progress"] if meta.is_file() else None
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    if resumed.returncode != 0:
        sys.exit(f"resumed regenerate failed:\n{resumed.stdout}\n{resumed.stderr}")
    return {
        "backend": backend,
        "killed_after_s": None if finished_first else killed_at,
        "progress_at_kill": at_kill,
        "resumed_bytes_identical": out.read_bytes() == uninterrupted.read_bytes(),
        "agreement_with_uninterrupted": agreement(out, uninterrupted),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--backends", nargs="+", default=["vllm", "transformers"])
    p.add_argument("--max-samples", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seq-length", type=int)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.4)
    p.add_argument(
        "--kill-after",
        type=float,
        help="kill -9 the first backend's second run once a chunk is committed, or after this "
        "many seconds; no kill/resume check without it",
    )
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"runs": []}
    for k, backend in enumerate(args.backends):
        results["runs"].append(run(args, backend))
        print(json.dumps(results["runs"][-1]), flush=True)
        if k == 0 and args.kill_after:  # before the other backends: the first one's own check
            results["resume"] = kill_and_resume(args, backend, Path(results["runs"][0]["output"]))
            print(json.dumps({"resume": results["resume"]}), flush=True)
    outputs = [Path(r["output"]) for r in results["runs"]]
    if len(outputs) > 1:
        results["agreement"] = agreement(outputs[0], outputs[1])
        print(json.dumps({"agreement": results["agreement"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
