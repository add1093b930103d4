"""`speculators datagen --nproc-per-node 2 --device cpu`: two torchrun workers (gloo) share the
batches of one run. Their sample files are byte-identical to a one-process run's, one
data_config.json and one token_freq.pt are written, a partial dir resumes with another process
count, and a refused input stops every process with the one message and exit 2."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from speculators_process import run_speculators
from typer.testing import CliRunner

from speculators.artifacts.sample_files import list_sample_files
from speculators.artifacts.token_freq import load_token_freq, load_token_freq_meta
from speculators.cli import app
from speculators.cli.common import expand_multi_value_flags

CONVERSATIONS = [
    {
        "conversations": [
            {"from": "human", "value": "Count " + " ".join(map(str, range(n)))},
            {"from": "gpt", "value": "The quick brown fox jumps over the lazy dog. " * n},
        ]
    }
    for n in (1, 3, 5, 8, 2, 13, 4, 7, 6)
]


def flags(workdir: Path, model: Path, out: str) -> list[str]:
    return [
        "--target-model-path", str(model), "--train-data-path", str(workdir / "convs.jsonl"),
        "--output-dir", str(workdir / out), "--token-freq-path", str(workdir / out / "freq.pt"),
        "--cache-dir", str(workdir / "cache"), "--seq-length", "96", "--batch-size", "2",
        "--device", "cpu",
    ]  # fmt: skip


def speculators_datagen(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    return run_speculators("datagen", args, timeout)


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in list_sample_files(out)}


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory) -> Path:
    """The same data once in this process (1 process) and once by two torchrun workers."""
    workdir = tmp_path_factory.mktemp("procs")
    (workdir / "convs.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    one = CliRunner().invoke(
        app, expand_multi_value_flags(["datagen", *flags(workdir, tiny_llama, "one")])
    )
    assert one.exit_code == 0, one.output
    two = speculators_datagen([*flags(workdir, tiny_llama, "two"), "--nproc-per-node", "2"])
    assert two.returncode == 0, two.stdout + two.stderr
    assert "torch.distributed.run" in two.stderr and "--nproc-per-node 2" in two.stderr
    (workdir / "two.stdout").write_text(two.stdout)
    return workdir


def test_two_processes_write_the_one_process_files(runs):
    one, two = digests(runs / "one"), digests(runs / "two")
    assert len(one) == len(CONVERSATIONS) and two == one
    freq_one, freq_two = (runs / d / "freq.pt" for d in ("one", "two"))
    assert load_token_freq(freq_two) == load_token_freq(freq_one)  # counted once, by rank 0
    assert load_token_freq_meta(freq_two) == load_token_freq_meta(freq_one)
    config = json.loads((runs / "two" / "data_config.json").read_text())
    assert config["data"]["num_samples"] == len(CONVERSATIONS)
    # The command recorded is the user's, not the workers' `--config FILE`.
    command = config["reproducibility"]["command"]
    assert "--nproc-per-node 2" in command and "--config" not in command
    # One summary, by the first process, counting every process's samples.
    stdout = (runs / "two.stdout").read_text()
    assert stdout.count("datagen") >= 1 and f"{len(CONVERSATIONS)} generated now" in stdout
    assert "2 processes" in stdout


def test_a_partial_dir_resumes_with_another_process_count(runs, tiny_llama):
    out = runs / "two"
    before = digests(out)
    removed = sorted(before)[::2]  # samples of both processes' batches
    for name in removed:
        (out / name).unlink()
    res = speculators_datagen([*flags(runs, tiny_llama, "two"), "--nproc-per-node", "2"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(removed)} generated now" in res.stdout
    assert digests(out) == before
    # One process resumes a dir two processes wrote (nothing left to do).
    one = CliRunner().invoke(
        app, expand_multi_value_flags(["datagen", *flags(runs, tiny_llama, "two")])
    )
    assert one.exit_code == 0 and "0 generated now" in one.output


def test_a_refused_input_stops_every_process(runs, tiny_llama):
    """A dir of another config: the first process refuses, the others are stopped, nothing
    written is lost, exit 2 with the one message."""
    out = runs / "two"
    before = digests(out)
    args = flags(runs, tiny_llama, "two")
    args[args.index("--seq-length") + 1] = "64"
    res = speculators_datagen([*args, "--nproc-per-node", "2"])
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("error:") == 1 and "--output-dir" in res.stderr
    assert "Traceback" not in res.stderr
    assert digests(out) == before


def test_bad_process_flags_are_refused_before_anything_runs(tiny_llama, tmp_path):
    def run(*extra: str):
        return CliRunner().invoke(
            app, ["datagen", "--target-model-path", str(tiny_llama), "--train-data-path", "x",
                  "--output-dir", str(tmp_path / "o"), *extra],
        )  # fmt: skip

    res = run("--backend", "vllm", "--nproc-per-node", "2")
    assert res.exit_code == 2 and "--tensor-parallel-size" in res.output
    res = run("--nnodes", "2")
    assert res.exit_code == 2 and "--rdzv-endpoint" in res.output
    res = run("--nproc-per-node", "0")
    assert res.exit_code == 2 and "--nproc-per-node" in res.output
    res = run("--device", "cuda", "--nproc-per-node", "2", "--backend", "transformers")
    assert res.exit_code == 2  # no GPU here (or too few for two processes)
    res = run("--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1")
    assert res.exit_code == 2 and "--node-rank" in res.output
    res = run("--hidden-states-dtype", "fp16")
    assert res.exit_code == 2 and "--hidden-states-dtype" in res.output
    (tmp_path / "bad.json").write_text("{not json")
    res = run("--config", str(tmp_path / "bad.json"))
    assert res.exit_code == 2 and "--config" in res.output and "bad.json" in res.output
    (tmp_path / "list.json").write_text("[1, 2]")
    res = run("--config", str(tmp_path / "list.json"))
    assert res.exit_code == 2 and "JSON object" in res.output
    assert not (tmp_path / "o").exists()
