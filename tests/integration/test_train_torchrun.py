"""`speculators train` with one CPU process goes through torchrun like any other run: the
launcher starts `torch.distributed.run --nproc-per-node 1`, the worker trains the same numbers
as a Python call of `run_train`, a rerun resumes, and a refused input is still one `error:`
paragraph with exit code 2 and nothing written. (Two processes: test_train_distributed.py.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from test_train_distributed import flags, speculators_train

from speculators.config import TrainConfig
from speculators.train.run import run_train


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_one_process_runs_under_torchrun_then_resumes(tiny_llama, train_data, tiny_vocab, tmp_path):
    save = tmp_path / "ck"
    args = [*flags(tiny_llama, train_data, tiny_vocab, save), "--device", "cpu"]
    res = speculators_train([*args, "--epochs", "1"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "starting 1 process:" in res.stderr
    assert "-m torch.distributed.run --nproc-per-node 1 --standalone" in res.stderr
    written = json.loads((save / "train_config.json").read_text())  # recorded with epoch 0
    assert (written["nproc_per_node"], written["epochs"], written["device"]) == (1, 1, "cpu")

    # The same numbers as this process training alone (one code path, one process group each).
    here = TrainConfig(**(written | {"save_path": str(tmp_path / "here")}))
    alone = run_train(here)
    assert alone is not None
    ours = json.loads((save / "0" / "training_state.json").read_text())["metrics"]
    for key in ("train/loss_0", "val/loss_0", "val/acc_0"):
        assert ours[key] == pytest.approx(alone.history[0][key], rel=1e-3, abs=1e-4), key

    res = speculators_train([*args, "--epochs", "2"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming after epoch 0" in res.stdout
    assert json.loads((save / "1" / "training_state.json").read_text())["epoch"] == 1
    assert json.loads((save / "train_config.json").read_text())["epochs"] == 2


def test_a_refused_input_exits_2_with_one_message_and_writes_nothing(
    tiny_llama, train_data, tiny_vocab, tmp_path
):
    (tmp_path / "empty").mkdir()
    save = tmp_path / "ck"
    save.mkdir()
    (save / "notes.txt").write_text("mine")
    before = snapshot(save)
    args = flags(tiny_llama, tmp_path / "empty", tiny_vocab, save)
    res = speculators_train([*args, "--device", "cpu"], timeout=120)
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 2, out
    assert out.count("error:") == 1 and "error: --data-path" in out, out
    assert "Traceback" not in out and "ChildFailedError" not in out and "exitcode" not in out
    assert snapshot(save) == before
