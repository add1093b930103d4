"""Pure training-step throughput of the EAGLE-3 draft on synthetic packed rows.

No data loading, no checkpoints: random verifier head and hidden states of the right shapes,
then timed optimizer steps (forward with TTT, backward, clip, AdamW), queued and read as
`Trainer.train` does (one step in flight).

    python benchmarks/bench_train.py --config tiny --total-seq-len 1024          # CPU-sized
    python benchmarks/bench_train.py --config llama-3.1-8b --total-seq-len 8192  # one GPU
    python benchmarks/bench_train.py --config path/to/config.json ...            # any verifier
"""

from __future__ import annotations

import argparse
import faulthandler
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from shapes import SHAPES  # benchmarks/ is on sys.path when a script runs
from transformers import AutoConfig, LlamaConfig

from speculators.models.eagle3 import Eagle3Draft, draft_layer_config
from speculators.train.build import place_model
from speculators.train.step import VerifierTargets
from speculators.train.trainer import Trainer, TrainerOptions


def verifier_config(name: str):
    if name in SHAPES:
        return LlamaConfig(**SHAPES[name])
    return AutoConfig.from_pretrained(Path(name).parent if name.endswith(".json") else name)


def synthetic_batch(cfg, total_seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    """One packed row like PackedRows produces: documents of lognormal(6.0, 0.8) lengths capped
    at 2048 (ShareGPT-like, mean ~550 tokens), the row cut at `total_seq_len`."""
    g = torch.Generator().manual_seed(seed)
    h, t = cfg.hidden_size, total_seq_len
    doc, pos = torch.empty(t, dtype=torch.long), torch.empty(t, dtype=torch.long)
    start, d = 0, 0
    while start < t:
        length = int(torch.empty(1).log_normal_(6.0, 0.8, generator=g).clamp(16, 2048))
        n = min(length, t - start)
        doc[start : start + n], pos[start : start + n] = d, torch.arange(n)
        start, d = start + n, d + 1
    return {
        "input_ids": torch.randint(0, cfg.vocab_size, (1, t), generator=g),
        "loss_mask": torch.ones(1, t, dtype=torch.long),
        "doc_ids": doc[None],
        "position_ids": pos[None],
        "aux_hidden_states": torch.randn(1, t, 3 * h, generator=g).to(torch.bfloat16),
        "last_hidden_state": torch.randn(1, t, h, generator=g).to(torch.bfloat16),
    }


def flops_per_token(cfg, batch: dict[str, torch.Tensor], vd: int, ttt_steps: int) -> float:
    """The draft's real FLOPs per token, as issue 8 counts them: fc once; per TTT step the
    2H-input layer, attention and lm_head, forward and backward (3x forward); the frozen
    verifier lm_head forward for the targets. (The same count whatever the lm_head and metrics
    settings: tokens/s, not this, is what compares runs.)"""
    h, i = cfg.hidden_size, cfg.intermediate_size
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    layer = 2 * h * h + 2 * (2 * h * kv) + h * h + 3 * h * i
    doc = batch["doc_ids"][0]
    _, counts = torch.unique_consecutive(doc, return_counts=True)
    # causal same-document attention: sum n^2/2 keys per document, QK and PV, per token
    attn = 2 * 2 * h * float((counts.double() ** 2 / 2).sum()) / doc.numel()
    per_step = 3 * (2 * (layer + h * vd) + attn)
    return 3 * 2 * 3 * h * h + ttt_steps * per_step + 2 * h * cfg.vocab_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="tiny", help=f"{', '.join(SHAPES)} or a config path")
    p.add_argument("--total-seq-len", type=int, default=1024)
    p.add_argument("--draft-vocab-size", type=int, default=32000)
    p.add_argument("--ttt-steps", type=int, default=3)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 3 warm-up steps)")
    p.add_argument(
        "--profile",
        type=Path,
        help="also profile 2 steps: kernel table to FILE, Chrome trace beside it (.trace.json.gz)",
    )
    p.add_argument(
        "--dump-stacks-every",
        type=float,
        help="print every thread's Python stack to stderr every S seconds (a stuck-looking step)",
    )
    p.add_argument("--peak-tflops", type=float, default=780.0, help="for MFU (H200 bf16: ~780)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--attention", choices=["dense", "flex"], default=None)
    p.add_argument("--no-compile", action="store_true", help="eager draft (GPU default: compiled)")
    p.add_argument("--train-lm-head", action="store_true", help="as `train --train-lm-head`")
    p.add_argument(
        "--metrics-every", type=int, default=10, help="as `train --metrics-every` (default 10)"
    )
    p.add_argument(
        "--accuracy-over",
        choices=["full", "draft"],
        default="full",
        help="the verifier argmax accuracy is scored against: full vocab (ours, SPEC §3) or the "
        "draft vocab (speculators 0.9.0's)",
    )
    args = p.parse_args()
    if args.dump_stacks_every:
        faulthandler.dump_traceback_later(args.dump_stacks_every, repeat=True)

    device = torch.device(args.device)
    cfg = verifier_config(args.config)
    vd = min(args.draft_vocab_size, cfg.vocab_size)
    torch.manual_seed(0)
    model = Eagle3Draft(draft_layer_config(cfg, args.num_layers), vd, 3, cfg.hidden_size)
    target_ids = torch.randperm(cfg.vocab_size)[:vd].sort().values
    model.d2t.copy_(target_ids - torch.arange(vd))
    model.lm_head.weight.requires_grad_(args.train_lm_head)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm_head = (torch.randn(cfg.vocab_size, cfg.hidden_size) * 0.02).to(device, dtype)
    targets = VerifierTargets.from_verifier(
        torch.ones(cfg.hidden_size, device=device), lm_head, 1e-5, target_ids.to(device)
    )
    attention = args.attention or ("flex" if device.type == "cuda" else "dense")
    options = TrainerOptions(
        epochs=1, lr=1e-4, weight_decay=0.0, max_grad_norm=1.0, ttt_steps=args.ttt_steps,
        ttt_step_loss_decay=1.0, total_steps=1000, warmup_steps=10, lr_decay="cosine",
        attention=attention, seed=0, compile=device.type == "cuda" and not args.no_compile,
        metrics_every=args.metrics_every, accuracy_over=args.accuracy_over,
    )  # fmt: skip
    trainer = Trainer(place_model(model, device), targets, options, device, Path("/x"), {})
    # The pure step as the peer measures it: the packed row is already on the device. (The
    # H200 run of 2026-11-29 copied it from pageable host memory each step: ~35 ms of 243 ms.)
    batches = [
        {k: v.to(device) for k, v in synthetic_batch(cfg, args.total_seq_len, s).items()}
        for s in range(2)
    ]
    for i in range(3):  # warm-up (compilation, allocator)
        t = trainer.train_step(batches[i % 2])["train/step_s"]
        print(f"warm-up step {i + 1}/3: {t:.1f} s", file=sys.stderr, flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    # As `Trainer.train` runs them: one step in flight, step i read once step i+1 is queued.
    start = time.perf_counter()
    steps = trainer.steps_in_flight(batches[i % 2] for i in range(args.steps))
    each = [metrics["train/step_s"] for _, metrics in steps]
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    result = {
        "config": args.config,
        "device": str(device),
        "attention": attention,
        "compiled": options.compile,
        "total_seq_len": args.total_seq_len,
        "draft_vocab_size": vd,
        "ttt_steps": args.ttt_steps,
        "num_layers": args.num_layers,
        "train_lm_head": args.train_lm_head,
        "metrics_every": args.metrics_every,
        "accuracy_over": args.accuracy_over,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "step_s": elapsed / args.steps,
        "tokens_per_s": args.total_seq_len * args.steps / elapsed,
        "step_s_each": [round(t, 4) for t in each],
        "gflop_per_token": flops_per_token(cfg, batches[0], vd, args.ttt_steps) / 1e9,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["mfu"] = (
            result["tokens_per_s"] * result["gflop_per_token"] / (args.peak_tflops * 1e3)
        )
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(result))
    if args.profile:
        profile(trainer, batches, args.profile)


def profile(trainer: Trainer, batches: list, out: Path) -> None:
    """Where a step's time goes: the top operators by device (or CPU) self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        for batch in batches:
            trainer.train_step(batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=80, max_name_column_width=90)
    out.write_text(table)
    print(table)
    trace = out.with_suffix(".trace.json")
    prof.export_chrome_trace(str(trace))
    with trace.open("rb") as f, gzip.open(f"{trace}.gz", "wb") as z:
        shutil.copyfileobj(f, z)
    trace.unlink()


if __name__ == "__main__":
    main()
