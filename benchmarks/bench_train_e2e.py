"""End-to-end `speculators train` throughput through its torchrun launch, on synthetic files.

Builds, in under a minute, a random-weight verifier dir holding only what the trainer reads
(config.json + embed_tokens, final norm and lm_head in safetensors), sample files of
ShareGPT-like lengths (bf16 or fp8, 3 aux layers + the last layer), data_config.json and
d2t/t2d; then runs `speculators train --nproc-per-node N ...` (torchrun; FSDP2 when N > 1) and
prints steady-state tokens/s and peak GPU memory from the run's per-step metrics (the `jsonl`
logger).

    python benchmarks/bench_train_e2e.py --size llama-3.1-8b --steps 200   # one H200 (~5 min)
    python benchmarks/bench_train_e2e.py --size tiny --device cpu          # CPU check (~30 s)

A few hundred real files are written; further samples are symlinks to them, so an epoch of
hundreds of 8192-token rows needs a few GB of disk, not 50. `--cold` writes every sample as its
own file and evicts them all from the page cache before training (as a data set much larger
than memory is read: from the disk), which is what `--hidden-states-dtype fp8` halves:

    python benchmarks/bench_train_e2e.py --size llama-3.1-8b --steps 40 --cold \\
        --hidden-states-dtype fp8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from shapes import SHAPES  # benchmarks/ is on sys.path when a script runs


def make_verifier(out: Path, size: str, gen_device: str) -> Path:
    from transformers import LlamaConfig

    cfg = LlamaConfig(**SHAPES[size], architectures=["LlamaForCausalLM"])
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    v, h = cfg.vocab_size, cfg.hidden_size
    g = torch.Generator(gen_device).manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g, device=gen_device) * 0.02  # noqa: E731
    save_file(
        {
            "model.embed_tokens.weight": rand(v, h).bfloat16().cpu(),
            "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
            "lm_head.weight": rand(v, h).bfloat16().cpu(),
        },
        str(out / "model.safetensors"),
    )
    return out


def make_data(
    out: Path, verifier: Path, real: int, total: int, gen_device: str, hidden_dtype: str
) -> Path:
    """`real` sample files of lognormal(6.0, 0.8) lengths (mean ~550, cut at 2048), then
    symlinks up to `total` samples; data_config.json with the default layer ids."""
    from transformers import AutoConfig

    from speculators.artifacts.data_config import DataConfig, format_schema, save_data_config
    from speculators.artifacts.layer_ids import default_layer_ids
    from speculators.artifacts.sample_files import sample_path
    from speculators.artifacts.samples import save_sample

    cfg = AutoConfig.from_pretrained(verifier)
    h, layer_ids = cfg.hidden_size, default_layer_ids(cfg.num_hidden_layers)
    rng = np.random.default_rng(0)
    g = torch.Generator(gen_device).manual_seed(1)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(real):
        n = int(np.clip(rng.lognormal(6.0, 0.8), 16, 2048))
        ids = torch.from_numpy(rng.integers(0, cfg.vocab_size, n))
        states = torch.randn(len(layer_ids), n, h, generator=g, device=gen_device)
        mask = torch.zeros(n, dtype=torch.long)
        mask[n // 4 :] = 1  # the reply, as a chat template's loss mask would mark it
        hidden = list(states.bfloat16().cpu().unbind(0))
        save_sample(sample_path(out, i), ids, hidden, mask, hidden_dtype)
    for i in range(real, total):
        os.symlink(sample_path(out, i % real).name, sample_path(out, i))
    config = DataConfig(
        generated_at="2026-01-01T00:00:00+00:00",
        speculators_version="bench",
        reproducibility={
            "command": "bench_train_e2e",
            "package_versions": {
                "torch": torch.__version__,
                "transformers": "x",
                "speculators": "x",
            },
        },
        model={"target_model_path": str(verifier), "max_model_len": 2048, "hidden_size": h},
        data={"train_data_path": "synthetic", "seq_length": 2048, "num_samples": total},
        hidden_states={"layer_ids": layer_ids, "hidden_states_dtype": hidden_dtype},
        generation={},
        format={"schema": format_schema(h, len(layer_ids), hidden_dtype)},
    )
    save_data_config(out, config)
    return out


def evict(data: Path) -> tuple[int, int]:
    """Drop every sample file of `data` from the page cache (written and fsynced, so clean
    pages): the next read comes from the disk. (files, bytes)."""
    files = size = 0
    for path in data.glob("data_*.pt"):
        if path.is_symlink():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            size += os.fstat(fd).st_size
        finally:
            os.close(fd)
        files += 1
    return files, size


def make_vocab(out: Path, vocab_size: int, draft_vocab_size: int) -> tuple[Path, Path]:
    from speculators.artifacts.vocab_mapping import save_vocab_mapping

    target_ids = np.sort(np.random.default_rng(2).choice(vocab_size, draft_vocab_size, False))
    t2d = np.zeros(vocab_size, dtype=np.bool_)
    t2d[target_ids] = True
    return save_vocab_mapping(out, target_ids - np.arange(draft_vocab_size), t2d)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", choices=list(SHAPES), default="llama-3.1-8b")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/bench_train_e2e"))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20, help="steps left out of the steady state")
    p.add_argument("--real-samples", type=int, default=256)
    p.add_argument("--total-seq-len", type=int, default=8192)
    p.add_argument("--draft-vocab-size", type=int, default=32000)
    p.add_argument("--nproc-per-node", type=int, default=1)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--num-workers", type=int, default=8)
    p.add_argument("--no-compile", action="store_true", help="pass --no-compile to train")
    p.add_argument("--hidden-states-dtype", choices=["bf16", "fp8"], default="bf16")
    p.add_argument(
        "--train-args",
        default="",
        help="more `speculators train` flags, e.g. '--train-lm-head --metrics-every 1' (the work "
        "of the defaults before issue 16)",
    )
    p.add_argument(
        "--cold", action="store_true", help="one file per sample, all evicted from the page cache"
    )
    args = p.parse_args()

    gen = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    root = args.work_dir / args.size
    t0 = time.perf_counter()
    verifier = root / "verifier"
    if not (verifier / "model.safetensors").is_file():
        make_verifier(verifier, args.size, gen)
    vocab = SHAPES[args.size]["vocab_size"]
    vd = min(args.draft_vocab_size, vocab // 2)
    d2t, t2d = make_vocab(root / "vocab", vocab, vd)
    # Enough samples (mean ~550 tokens, packed ~90% full) for `steps` rows of one epoch.
    total = math.ceil(args.steps * args.nproc_per_node * args.total_seq_len / 480)
    real = total if args.cold else min(args.real_samples, total)
    data = root / f"data-{total}-{real}-{args.hidden_states_dtype}"
    if not (data / "data_config.json").is_file():
        make_data(data, verifier, real, total, gen, args.hidden_states_dtype)
    # Bytes per token from the first real files (read before the eviction below).
    first = [p for p in sorted(data.glob("data_*.pt"))[:64] if not p.is_symlink()]
    tokens = sum(torch.load(p, weights_only=True)["input_ids"].numel() for p in first)
    bytes_per_token = sum(p.stat().st_size for p in first) / tokens
    files, size = evict(data) if args.cold else (0, 0)
    print(
        f"setup: {time.perf_counter() - t0:.1f} s ({total} samples, {real} files; "
        f"{bytes_per_token / 1024:.1f} KiB per token; evicted {files} files, "
        f"{size / 2**30:.1f} GiB)",
        flush=True,
    )

    save, logs = root / "checkpoints", root / "logs"
    for d in (save, logs):
        subprocess.run(["rm", "-rf", str(d)], check=True)
    cmd = [
        sys.executable, "-m", "speculators", "train",
        "--verifier-name-or-path", str(verifier), "--data-path", str(data),
        "--d2t-path", str(d2t), "--t2d-path", str(t2d), "--save-path", str(save),
        "--epochs", "1", "--max-steps-per-epoch", str(args.steps), "--val-fraction", "0",
        "--total-seq-len", str(args.total_seq_len), "--num-workers", str(args.num_workers),
        "--nproc-per-node", str(args.nproc_per_node), "--device", args.device,
        "--logger", "jsonl", "--log-dir", str(logs), "--run-name", "bench",
    ] + (["--no-compile"] if args.no_compile else []) + shlex.split(args.train_args)  # fmt: skip
    print(" ".join(cmd), flush=True)
    t1 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t1
    report(logs / "bench" / "metrics.jsonl", save / "0", args, wall, bytes_per_token)


def report(
    metrics_file: Path,
    checkpoint: Path,
    args: argparse.Namespace,
    wall: float,
    bytes_per_token: float,
) -> None:
    lines = [json.loads(x) for x in metrics_file.read_text().splitlines()]
    steps = [x for x in lines if "train/tokens_per_s" in x]
    steady = steps[args.warmup :] or steps
    rates = [x["train/tokens_per_s"] for x in steady]
    # A step's step_s runs from when the step before it was seen done to when it is (the
    # trainer keeps one step in flight): waits for the loader included. data_wait_s is the
    # host's time blocked on the loader, while the GPU still had a step to run.
    step_s = [x["train/step_s"] for x in steady]
    tokens = [x["train/tokens_per_s"] * x["train/step_s"] for x in steady]
    wait_share = sum(x["train/data_wait_s"] for x in steady) / sum(step_s)
    state = json.loads((checkpoint / "training_state.json").read_text())["metrics"]
    result = {
        "size": args.size,
        "processes": args.nproc_per_node,
        "total_seq_len": args.total_seq_len,
        "hidden_states_dtype": args.hidden_states_dtype,
        "cold": args.cold,
        "train_args": args.train_args,
        "bytes_per_token": round(bytes_per_token),
        "steps": len(steps),
        "steady_tokens_per_s_median": statistics.median(rates),
        "steady_tokens_per_s_incl_data_wait": sum(tokens) / sum(step_s),
        "data_wait_share": round(wait_share, 4),
        "steady_tokens_per_s_mean_per_process": statistics.fmean(rates) / args.nproc_per_node,
        "epoch_tokens_per_s_incl_warmup_and_loading": state["train/tokens_per_s"],
        "peak_mem_gib": max((x.get("train/peak_mem_gib", 0.0) for x in steps), default=0.0),
        "first_loss": steps[0]["train/loss"],
        "last_loss": steps[-1]["train/loss"],
        "wall_s_incl_startup_and_checkpoint": round(wall, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
