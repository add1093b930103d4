"""Datagen throughput of both backends in one run, on the same rows and machine: the
transformers backend (our pipelined loop, compiled layers), the vllm backend (vLLM's
`extract_hidden_states` export through our loop, pipelined and synchronous), and plain vLLM
prefill with nothing captured (the ceiling the export is measured against). Random weights of
a real shape; vLLM runs them with `load_format="dummy"` (no weights on disk).

    # GPU (one H200: about 6 minutes, most of it engine start-up and compiling)
    python benchmarks/bench_datagen_vllm.py --config llama-3.1-8b --num-samples 1024 \\
        --seq-length 2048 --batch-size 16 --out-dir /dev/shm

Prints one line per path and a JSON summary (also to --json if given).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_datagen import ours, samples, warm_up  # benchmarks/ is on sys.path
from shapes import SHAPES

from speculators.artifacts.layer_ids import default_layer_ids
from speculators.config import DatagenConfig

HOST = torch.device("cpu")  # vLLM's work is done when its outputs are back: nothing to sync


def transformers_run(args, rows, layer_ids) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from speculators.datagen.backends.transformers import TransformersBackend

    device = torch.device("cuda")
    torch.set_default_dtype(torch.bfloat16)
    with device:
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[args.config])).eval()
    torch.set_default_dtype(torch.float32)
    backend = TransformersBackend(model.model, layer_ids, device, "inductor")
    warm_up(backend, rows, sorted(rows, key=lambda r: -len(r[0])), device, args)
    with tempfile.TemporaryDirectory(dir=args.out_dir[0]) as tmp:
        wall, _, stats = ours(backend, rows, device, args, Path(tmp), True)
    backend.close()
    del backend, model
    gc.collect()
    torch.cuda.empty_cache()
    return {"seconds": wall, "bytes": stats.bytes_written}


def vllm_run(args, rows, layer_ids, model_dir: Path) -> dict:
    from speculators.datagen.backends.vllm import VllmBackend

    config = DatagenConfig(
        target_model_path=str(model_dir), train_data_path="unused", seq_length=args.seq_length,
        batch_size=args.batch_size, gpu_memory_utilization=args.gpu_memory_utilization,
        backend="vllm", no_compile=args.no_compile,
    )  # fmt: skip
    start = time.perf_counter()
    backend = VllmBackend(config, layer_ids, {"load_format": "dummy", "skip_tokenizer_init": True})
    startup = time.perf_counter() - start
    out = {"startup_seconds": startup}
    try:
        longest = sorted(rows, key=lambda r: -len(r[0]))
        with tempfile.TemporaryDirectory(dir=args.out_dir[0]) as tmp:  # warm-up
            ours(backend, longest[: 4 * args.batch_size], HOST, args, Path(tmp), True)
        for name, pipelined in (("pipelined", True), ("sync", False)):
            with tempfile.TemporaryDirectory(dir=args.out_dir[0]) as tmp:
                wall, _, stats = ours(backend, rows, HOST, args, Path(tmp), pipelined)
            out[name] = {"seconds": wall, "bytes": stats.bytes_written}
    finally:
        backend.close()
    return out


def plain_vllm_prefill(args, rows, model_dir: Path) -> dict:
    """vLLM alone, prefill only (max_tokens=1), nothing captured: the speed to compare with."""
    import vllm

    llm = vllm.LLM(
        model=str(model_dir), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
        max_model_len=args.seq_length + 2, max_num_seqs=args.batch_size,
        max_num_batched_tokens=args.batch_size * (args.seq_length + 2),
        enable_prefix_caching=False, enable_chunked_prefill=False,
        gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.no_compile,
    )  # fmt: skip
    sampling = vllm.SamplingParams(max_tokens=1, detokenize=False)
    prompts = [{"prompt_token_ids": ids} for ids, _ in rows]
    llm.generate(prompts[: 4 * args.batch_size], sampling, use_tqdm=False)
    start = time.perf_counter()
    llm.generate(prompts, sampling, use_tqdm=False)
    seconds = time.perf_counter() - start
    from speculators.models.vllm import shutdown

    shutdown(llm)
    return {"seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", choices=sorted(SHAPES), default="llama-3.1-8b")
    p.add_argument("--num-samples", type=int, default=1024)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    p.add_argument("--out-dir", type=Path, nargs=1, default=[None])
    p.add_argument("--no-compile", action="store_true", help="eager vLLM (enforce_eager)")
    p.add_argument("--paths", nargs="+", default=["transformers", "vllm", "plain-vllm"])
    p.add_argument("--json", type=Path, help="also write the summary here")
    args = p.parse_args()
    args.length_mix, args.max_batches, args.writer_threads = "sharegpt", 3, None

    shape = SHAPES[args.config]
    layer_ids = default_layer_ids(shape["num_hidden_layers"])
    rows = samples(args, None, shape["vocab_size"])
    tokens = sum(len(ids) for ids, _ in rows)
    print(f"{len(rows)} samples, {tokens:,} tokens, layers {layer_ids}", flush=True)
    model_dir = Path(tempfile.mkdtemp(prefix="bench-vllm-model-"))
    from transformers import LlamaConfig

    LlamaConfig(**shape, torch_dtype="bfloat16").save_pretrained(model_dir)
    summary: dict = {"config": args.config, "samples": len(rows), "tokens": tokens}

    def line(label: str, seconds: float, extra: str = "") -> float:
        rate = tokens / seconds
        print(f"{label}: {rate:,.0f} tokens/s ({seconds:.1f} s){extra}", flush=True)
        return rate

    if "transformers" in args.paths:
        t = transformers_run(args, rows, layer_ids)
        summary["transformers_pipelined"] = line("transformers backend, pipelined", t["seconds"])
    if "vllm" in args.paths:
        v = vllm_run(args, rows, layer_ids, model_dir)
        print(f"vllm backend start-up: {v['startup_seconds']:.0f} s", flush=True)
        for name in ("pipelined", "sync"):
            summary[f"vllm_{name}"] = line(f"vllm backend, {name}", v[name]["seconds"])
    if "plain-vllm" in args.paths:
        summary["plain_vllm_prefill"] = line(
            "plain vLLM prefill, no capture", plain_vllm_prefill(args, rows, model_dir)["seconds"]
        )
    print(json.dumps(summary), flush=True)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
