"""How datagen should batch: forward + copy to host (no writes) over the same samples, batched
by a fixed number of conversations (what `--batch-size` does) or by a token budget (a larger
batch of short conversations; not adopted, see docs/performance.md), each with our prebuilt
attention mask and with the 2-D mask transformers expands itself (reading it on the host).

    # GPU, Llama-3.1-8B shape, random weights, 1024 ShareGPT-like conversations (~3 min):
    python benchmarks/bench_datagen_batching.py --config llama-3.1-8b --num-samples 1024
    # CPU-sized (seconds):
    python benchmarks/bench_datagen_batching.py --config tiny --device cpu --num-samples 32
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_datagen import capture_only, decoder_gflop_per_token, load_model, samples
from shapes import SHAPES  # benchmarks/ is on sys.path when a script runs

from speculators.artifacts.layer_ids import default_layer_ids
from speculators.datagen.backends.transformers import TransformersBackend
from speculators.datagen.generate import length_sorted_batches


def token_budget_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Longest first; a batch grows while rows x its longest length stays within `budget`."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def timed(backend, rows, batches, device) -> float:
    """Seconds for one pass of capture_only's loop over these batches."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    capture_only(backend, rows, device, 0, batches)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", choices=sorted(SHAPES), default="llama-3.1-8b")
    p.add_argument("--num-samples", type=int, default=1024)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--token-budgets", type=int, nargs="+", default=[32768, 65536])
    p.add_argument("--no-compile", action="store_true", help="eager layers (GPU default: compiled)")
    p.add_argument("--peak-tflops", type=float, default=780.0, help="for MFU (H200 bf16: ~780)")
    args = p.parse_args()
    args.model, args.length_mix = None, "sharegpt"

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, _ = load_model(args, device, dtype)
    rows = samples(args, None, model.config.vocab_size)
    lengths = [len(ids) for ids, _ in rows]
    tokens, gflop = sum(lengths), decoder_gflop_per_token(model, rows)
    compiled = device.type == "cuda" and not args.no_compile
    layer_ids = default_layer_ids(model.config.num_hidden_layers)
    backend = TransformersBackend(model.model, layer_ids, device, "inductor" if compiled else None)
    everything = list(range(len(rows)))
    variants = [
        (f"batch {n}", length_sorted_batches(lengths, everything, n)) for n in args.batch_sizes
    ]
    variants += [(f"<= {b} tokens", token_budget_batches(lengths, b)) for b in args.token_budgets]
    print(
        f"{len(rows)} samples, {tokens:,} tokens, {device} {dtype}, "
        f"{'compiled' if compiled else 'eager'} layers, {gflop:.2f} GFLOP/token",
        flush=True,
    )
    start = time.perf_counter()
    for _, batches in variants:  # compile for every shape class, fill the pinned pool
        timed(backend, rows, batches, device)
    print(f"warm-up: {time.perf_counter() - start:.0f} s", flush=True)
    for prebuilt in (True, False):
        if prebuilt and not backend.prebuilt_mask:
            continue  # not SDPA: the 2-D mask only
        backend.prebuilt_mask = prebuilt
        mask = "our 4-D mask" if prebuilt else "HF 2-D mask"
        for name, batches in variants:
            seconds = timed(backend, rows, batches, device)
            padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
            line = (
                f"{mask}, {name}: {len(batches)} batches, padding {padded / tokens - 1:.1%}, "
                f"{tokens / seconds:,.0f} tokens/s"
            )
            if device.type == "cuda":
                line += f", {tokens / seconds * gflop / (args.peak_tflops * 1e3):.1%} MFU"
            print(line, flush=True)


if __name__ == "__main__":
    main()
