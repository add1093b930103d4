"""How full `speculators train`'s packed rows are: first-fit (the default) against next-fit.

The GPU runs a whole row per step whatever it holds (padding included), so the share of real
tokens in the rows is the share of a step that trains: end-to-end tokens/s scales with it.

    python benchmarks/bench_packing.py                          # ShareGPT-like lengths
    python benchmarks/bench_packing.py --data-path ./data       # a datagen output dir's lengths

Lengths: lognormal(6.0, 0.8) cut to [16, 2048] (bench_train_e2e.py's synthetic samples), or
the samples of --data-path. Prints one JSON line per row length.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from speculators.train.data import index_data
from speculators.train.packing import pack


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-path", type=Path, help="a datagen output dir (default: synthetic)")
    p.add_argument("--num-samples", type=int, default=100_000, help="synthetic lengths")
    p.add_argument("--total-seq-len", type=int, nargs="+", default=[2048, 8192, 16384])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.data_path:
        lengths = index_data(args.data_path, 1, 0.0, seed=args.seed).lengths
    else:
        rng = np.random.default_rng(args.seed)
        lengths = np.clip(rng.lognormal(6.0, 0.8, args.num_samples), 16, 2048).astype(int).tolist()
    order = list(range(len(lengths)))
    random.Random(args.seed).shuffle(order)
    for t in args.total_seq_len:
        tokens = sum(min(n, t) for n in lengths)
        result: dict = {"samples": len(lengths), "total_seq_len": t}
        for packing in ("first-fit", "next-fit"):
            start = time.perf_counter()
            rows = pack(order, lengths, t, packing)  # type: ignore[arg-type]
            result[packing] = {
                "rows": len(rows),
                "fill": round(tokens / (len(rows) * t), 4),
                "seconds": round(time.perf_counter() - start, 3),
            }
        saved = 1 - result["first-fit"]["rows"] / result["next-fit"]["rows"]
        result["rows_saved"] = round(saved, 4)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
