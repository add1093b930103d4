"""Run the datagen and training benchmarks in one command and print one table.

    python benchmarks/run_all.py --cpu     # about a minute on a 2-core CPU
    python benchmarks/run_all.py --gpu     # one H200: Llama-3.1-8B-shaped verifier, random weights

Each benchmark also runs alone; see its docstring. Numbers go to stdout (and --json FILE).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CPU = [
    ("datagen", ["bench_datagen.py", "--config", "smollm2-135m", "--device", "cpu",
                 "--num-samples", "8", "--seq-length", "128", "--batch-size", "4"]),
    ("datagen batching", ["bench_datagen_batching.py", "--config", "tiny", "--device", "cpu",
                          "--num-samples", "32", "--seq-length", "256"]),
    ("train", ["bench_train.py", "--config", "tiny", "--total-seq-len", "512", "--steps", "3"]),
]  # fmt: skip
GPU = [
    ("datagen", ["bench_datagen.py", "--config", "llama-3.1-8b", "--device", "cuda",
                 "--num-samples", "1024", "--seq-length", "2048", "--batch-size", "16",
                 "--length-mix", "sharegpt"]),
    ("datagen batching", ["bench_datagen_batching.py", "--config", "llama-3.1-8b",
                          "--num-samples", "1024"]),
    ("datagen vllm", ["bench_datagen_vllm.py", "--config", "llama-3.1-8b", "--num-samples", "1024",
                      "--seq-length", "2048", "--batch-size", "16"]),
    ("train 8192", ["bench_train.py", "--config", "llama-3.1-8b", "--total-seq-len", "8192",
                    "--steps", "10"]),
    ("train 16384", ["bench_train.py", "--config", "llama-3.1-8b", "--total-seq-len", "16384",
                     "--steps", "10"]),
]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--cpu", action="store_true", help="CPU-sized runs")
    size.add_argument("--gpu", action="store_true", help="one-GPU runs at real shapes")
    p.add_argument("--json", type=Path, help="also write every benchmark's output lines here")
    args = p.parse_args()

    results: dict[str, list[str]] = {}
    for name, cmd in CPU if args.cpu else GPU:
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        proc = subprocess.run(
            [sys.executable, str(HERE / cmd[0]), *cmd[1:]], capture_output=True, text=True
        )
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0:
            lines.append(f"FAILED ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        results[name] = lines
        print("\n".join(lines), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    sys.exit(0 if all("FAILED" not in " ".join(v) for v in results.values()) else 1)


if __name__ == "__main__":
    main()
