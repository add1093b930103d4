"""`speculators datagen --nproc-per-node N` end to end through the CLI: tokens/s of 1 process
against N on the same data and machine, runs interleaved (1, N, 1, N, ...), each into a fresh
--output-dir. A random-weight verifier of a real shape is saved once to --work-dir with the
tokenizer of --tokenizer (its vocab widened to the shape's), and synthetic conversations of about
--seq-length tokens are written there.

    # 2 GPUs (Llama-3.1-8B shape, SmolLM2's tokenizer):
    python benchmarks/bench_datagen_processes.py --shape llama-3.1-8b --tokenizer ./SmolLM2 \\
        --nproc 1 2 --num-samples 512 --seq-length 2048 --batch-size 16 --work-dir /dev/shm/b
    # CPU smoke run:
    python benchmarks/bench_datagen_processes.py --shape tiny --tokenizer ./SmolLM2 \\
        --nproc 1 2 --num-samples 16 --seq-length 128 --device cpu --work-dir /tmp/b

`--hidden-states-dtype bf16 fp8` runs each process count with both file formats (interleaved too)
and reports the bytes per token of the files.

Prints one line per run and a JSON summary (also to --json if given). tokens/s is the CLI's own
figure: every process's tokens over the slowest process's generation time.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from shapes import SHAPES  # benchmarks/ is on sys.path

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "seven",
         "cats", "count", "numbers")  # fmt: skip


def build_model(shape: str, tokenizer_dir: Path, out: Path) -> Path:
    """A random-weight verifier of `shape` in bf16 with the tokenizer of `tokenizer_dir`."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    values = SHAPES[shape] | {"vocab_size": max(SHAPES[shape]["vocab_size"], len(tokenizer))}
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    # Initialised on the GPU when there is one: an 8B random init takes minutes on a CPU.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(LlamaConfig(**values, torch_dtype="bfloat16"))
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_conversations(path: Path, n: int, seq_length: int, seed: int = 0) -> Path:
    """`n` conversations of roughly seq_length / 2 to seq_length tokens (about 1.3 per word)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            words = int(rng.uniform(0.35, 0.7) * seq_length)
            text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
            turns = [
                {"from": "human", "value": text(words // 4)},
                {"from": "gpt", "value": text(words - words // 4)},
            ]
            f.write(json.dumps({"conversations": turns}) + "\n")
    return path


def run(
    args: argparse.Namespace, model: Path, data: Path, nproc: int, dtype: str, index: int
) -> dict:
    out = args.work_dir / f"out_{index}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "speculators", "datagen", "--target-model-path", str(model),
        "--train-data-path", str(data), "--output-dir", str(out),
        "--token-freq-path", str(out / "token_freq.pt"),
        "--cache-dir", str(args.work_dir / "cache"),
        "--seq-length", str(args.seq_length), "--batch-size", str(args.batch_size),
        "--device", args.device, "--backend", "transformers", "--nproc-per-node", str(nproc),
        "--hidden-states-dtype", dtype, *(["--no-compile"] if args.no_compile else []),
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"datagen --nproc-per-node {nproc} failed:\n{proc.stdout}\n{proc.stderr}")
    rate = re.search(r"throughput\s*│\s*([\d,]+) tokens/s", proc.stdout)
    tokens = re.search(r"│ tokens\s*│\s*([\d,]+)", proc.stdout)
    size = sum(f.stat().st_size for f in out.glob("data_*.pt"))
    shutil.rmtree(out, ignore_errors=True)
    return {
        "nproc": nproc,
        "hidden_states_dtype": dtype,
        "bytes_per_token": round(size / int(tokens.group(1).replace(",", ""))) if tokens else None,
        "tokens_per_s": float(rate.group(1).replace(",", "")) if rate else None,
        "tokens": int(tokens.group(1).replace(",", "")) if tokens else None,
        "wall_s": round(wall, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    p.add_argument("--model", type=Path, help="an existing verifier dir instead of --shape")
    p.add_argument("--tokenizer", type=Path, help="dir of a chat tokenizer (for --shape)")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--hidden-states-dtype", nargs="+", default=["bf16"], choices=["bf16", "fp8"])
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.model is None and args.tokenizer is None:
        p.error("give --model, or --tokenizer for a random-weight --shape")
    model = args.model or build_model(args.shape, args.tokenizer, args.work_dir / "model")
    data = write_conversations(args.work_dir / "convs.jsonl", args.num_samples, args.seq_length)
    results = []
    for r in range(args.rounds):
        for n in args.nproc:
            for dtype in args.hidden_states_dtype:
                result = run(args, model, data, n, dtype, len(results)) | {"round": r}
                print(json.dumps(result), flush=True)
                results.append(result)
    runs = [(n, d) for n in args.nproc for d in args.hidden_states_dtype]
    best = {
        f"{n} {d}": max(
            x["tokens_per_s"] or 0
            for x in results
            if x["nproc"] == n and x["hidden_states_dtype"] == d
        )
        for n, d in runs
    }
    base = best[f"{runs[0][0]} {runs[0][1]}"] or 1
    summary = {
        "shape": None if args.model else args.shape,
        "num_samples": args.num_samples,
        "seq_length": args.seq_length,
        "batch_size": args.batch_size,
        "best_tokens_per_s": best,
        "speedup_over_first": {n: round(v / base, 3) for n, v in best.items()},
        "runs": results,
    }
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
