"""`speculators train --nproc-per-node 2 --device cpu`: the CLI runs two workers under torchrun
(gloo, FSDP2). Compared against the plain one-process trainer with the same global batch, resumed
after a kill, and stopped by a failing rank."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from speculators_process import run_speculators

from speculators.artifacts.samples import save_sample
from speculators.config import TrainConfig
from speculators.train.run import run_train

EPOCHS = 3  # 9 training samples -> 3 packed rows per epoch -> 2 steps of 2 rows (one padded)


def flags(tiny_llama, train_data, tiny_vocab, save: Path) -> list[str]:
    return [
        "--verifier-name-or-path", str(tiny_llama), "--data-path", str(train_data),
        "--d2t-path", str(tiny_vocab[0]), "--t2d-path", str(tiny_vocab[1]),
        "--save-path", str(save), "--epochs", str(EPOCHS), "--lr", "3e-3",
        "--total-seq-len", "128", "--num-workers", "0", "--val-fraction", "0.2",
        "--rows-per-step", "2",
    ]  # fmt: skip


def speculators_train(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    return run_speculators("train", args, timeout)


@pytest.fixture(scope="module")
def two_procs(tiny_llama, train_data, tiny_vocab, tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("two") / "ck"
    args = flags(tiny_llama, train_data, tiny_vocab, save)
    logs = ["--logger", "jsonl", "--log-dir", str(save.parent / "logs")]
    res = speculators_train([*args, *logs, "--nproc-per-node", "2", "--device", "cpu"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "torch.distributed.run" in res.stderr and "--standalone" in res.stderr
    return save


def step_losses(log_dir: Path) -> list[float]:
    lines = (log_dir / "speculators" / "metrics.jsonl").read_text().splitlines()
    return [x["train/loss"] for x in map(json.loads, lines) if "train/loss" in x]


def epoch_metrics(save: Path) -> list[dict[str, float]]:
    return [
        json.loads((save / str(e) / "training_state.json").read_text())["metrics"]
        for e in range(EPOCHS)
    ]


def test_two_processes_follow_the_one_process_loss_curve(
    two_procs, tiny_llama, train_data, tiny_vocab, tmp_path
):
    # The resolved config the workers read, with the process count filled in.
    written = json.loads((two_procs / "train_config.json").read_text())
    assert written["nproc_per_node"] == 2 and written["rows_per_step"] == 2
    single = {"save_path": str(tmp_path / "one"), "log_dir": str(tmp_path), "nproc_per_node": None}
    history = run_train(TrainConfig(**(written | single))).history  # no process group
    curve_one, curve_two = step_losses(tmp_path), step_losses(two_procs.parent / "logs")
    assert len(curve_one) == len(curve_two) == 2 * EPOCHS
    assert curve_two == pytest.approx(curve_one, rel=2e-3)
    two = epoch_metrics(two_procs)
    assert len(history) == len(two) == EPOCHS
    for a, b in zip(history, two):
        for key in ("train/loss_0", "train/loss_2", "val/loss_0", "val/acc_0", "val/accept_len"):
            assert b[key] == pytest.approx(a[key], rel=2e-3, abs=2e-4), key
    assert two[-1]["val/loss_0"] < 0.95 * two[0]["val/loss_0"]  # it learns
    w1 = load_file(tmp_path / "one" / "2" / "model.safetensors")
    w2 = load_file(two_procs / "2" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=2e-2, atol=2e-3)


def test_resume_after_a_kill_continues_from_the_checkpoint(
    two_procs, tiny_llama, train_data, tiny_vocab, tmp_path
):
    # What a kill during epoch 2 leaves: epochs 0 and 1 complete, a cut-off save beside them.
    save = tmp_path / "ck"
    save.mkdir()
    for e in ("0", "1"):
        shutil.copytree(two_procs / e, save / e)
    (save / ".tmp-2.cut-off").mkdir()
    args = flags(tiny_llama, train_data, tiny_vocab, save)
    res = speculators_train([*args, "--nproc-per-node", "2", "--device", "cpu"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming after epoch 1" in res.stdout
    state = json.loads((save / "2" / "training_state.json").read_text())
    assert state["global_step"] == 2 * EPOCHS
    full, resumed = (
        load_file(two_procs / "2" / "model.safetensors"),
        load_file(save / "2" / "model.safetensors"),
    )
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=0)


def test_a_failing_rank_stops_the_run_with_its_message(
    tiny_llama, train_data, tiny_vocab, tmp_path
):
    data = tmp_path / "data"
    shutil.copytree(train_data, data)
    for name in ("data_4.pt", "data_7.pt"):  # NaN is found when the row is loaded, mid-epoch
        record = torch.load(data / name)
        record["hidden_states"][0][3, 1] = float("nan")
        save_sample(data / name, record["input_ids"], record["hidden_states"], record["loss_mask"])
    args = flags(tiny_llama, data, tiny_vocab, tmp_path / "ck")
    res = speculators_train([*args, "--nproc-per-node", "2", "--device", "cpu"], timeout=120)
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0
    assert "error: rank " in out and "NaN" in out, out
    assert not (tmp_path / "ck" / "0").exists()


def test_an_error_every_rank_finds_is_printed_once(tiny_llama, train_data, tiny_vocab, tmp_path):
    (tmp_path / "empty").mkdir()
    args = flags(tiny_llama, tmp_path / "empty", tiny_vocab, tmp_path / "ck")
    res = speculators_train([*args, "--nproc-per-node", "2", "--device", "cpu"], timeout=120)
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0
    assert out.count("no .pt sample files") == 1, out
    assert "error: --data-path" in out
