"""The training loader alone: packed rows per second from datagen dirs, e.g. the same samples
stored as bf16 and as fp8 (`datagen --hidden-states-dtype fp8`: the loader keeps fp8 rows fp8 and
the trainer converts them on its device; --fp8-on-host adds passes converting on the host).
Dirs are read in turn, round after round, so they share the machine's conditions. No GPU is
involved: this measures what the loader's host side costs per token (file reads, fp8 -> bf16
conversion where it is done on the host, copies into the row).

    python benchmarks/bench_loader.py --data-path ./data_bf16 ./data_fp8 --total-seq-len 2048 \\
        --rounds 3 [--drop-caches]

--drop-caches empties the page cache before each pass (needs root; then the disk is read),
otherwise the files come from memory after the first pass. Prints one JSON line per pass and a
summary with bytes per token on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from speculators.train.data import DataIndex, PackedRows, index_data
from speculators.train.packing import epoch_rows


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def one_pass(index: DataIndex, total_seq_len: int, max_rows: int | None, fp8: bool) -> dict:
    rows = epoch_rows(index, total_seq_len, 0, 0)[:max_rows]
    dataset = PackedRows(index.files, rows, total_seq_len, 1, fp8=fp8)
    tokens = sum(min(sum(index.lengths[i] for i in row), total_seq_len) for row in rows)
    start = time.perf_counter()
    for r in range(len(dataset)):
        item = dataset[r]
        if "error" in item:
            raise SystemExit(item["error"])
    seconds = time.perf_counter() - start
    return {"rows": len(rows), "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-path", type=Path, nargs="+", required=True)
    p.add_argument("--total-seq-len", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--drop-caches", action="store_true")
    p.add_argument(
        "--fp8-on-host",
        action="store_true",
        help="also read fp8 dirs the old way: converted to bf16 rows on the host",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    indexes = {path: index_data(path, 1, 0.0, 0) for path in args.data_path}
    # (dir, rows kept fp8): fp8 dirs as `train` reads them, and on the host if asked
    modes = [(path, index.fp8) for path, index in indexes.items()]
    modes += [(path, False) for path, index in indexes.items() if index.fp8 and args.fp8_on_host]
    label = {True: "fp8 to device", False: "bf16 rows"}
    passes = []
    for r in range(args.rounds):
        for path, fp8 in modes:
            dropped = drop_caches() if args.drop_caches else False
            result = one_pass(indexes[path], args.total_seq_len, args.max_rows, fp8)
            result |= {
                "data_path": str(path),
                "rows_as": label[fp8],
                "round": r,
                "caches_dropped": dropped,
            }
            print(json.dumps(result), flush=True)
            passes.append(result)
    summary = {}
    for path, fp8 in modes:
        size = sum(os.path.getsize(f) for f in indexes[path].files)
        ours = [x for x in passes if x["data_path"] == str(path) and x["rows_as"] == label[fp8]]
        summary[f"{path} ({label[fp8]})"] = {
            "bytes_on_disk": size,
            "bytes_per_token": round(size / sum(indexes[path].lengths), 1),
            "best_tokens_per_s": max(x["tokens_per_s"] for x in ours),
            "median_tokens_per_s": sorted(x["tokens_per_s"] for x in ours)[len(ours) // 2],
        }
    print(json.dumps({"total_seq_len": args.total_seq_len, "dirs": summary}))
    if args.json:
        args.json.write_text(json.dumps({"passes": passes, "dirs": summary}, indent=2))


if __name__ == "__main__":
    main()
