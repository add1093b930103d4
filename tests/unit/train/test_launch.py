"""The torchrun launch: which command `speculators train` runs its workers with, when, and the
config it hands them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from speculators import launcher
from speculators.cli import app
from speculators.config import TrainConfig
from speculators.train import launch


def test_when_to_launch(monkeypatch):
    """Always through torchrun, 1 process or N; never again from inside a worker."""
    started: list[list[str]] = []
    monkeypatch.setattr(launch, "run_torchrun", lambda cmd: started.append(cmd) or 0)
    monkeypatch.setattr(launcher, "nvidia_smi_gpus", lambda: 0)
    config = TrainConfig(verifier_name_or_path="m", device="cpu")
    assert launch.launch(config, {"TORCHELASTIC_RUN_ID": "x"}) is None  # already a worker
    assert not started
    assert launch.launch(config, {}) == 0  # one CPU process: through torchrun too
    assert launch.launch(config.model_copy(update={"device": "auto"}), {}) == 0  # no GPU
    assert [c[c.index("--nproc-per-node") + 1] for c in started] == ["1", "1"]
    launch.launch(config.model_copy(update={"device": "auto"}), {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert started[-1][started[-1].index("--nproc-per-node") + 1] == "2"  # two GPUs visible


def test_process_count_follows_visible_gpus():
    assert launch.visible_gpu_count({"CUDA_VISIBLE_DEVICES": "2,5"}, 8) == 2
    assert launch.visible_gpu_count({"CUDA_VISIBLE_DEVICES": ""}, 8) == 0
    assert launch.visible_gpu_count({}, 3) == 3
    assert launch.resolve_nproc(None, "auto", 2) == 2
    assert launch.resolve_nproc(None, "auto", 0) == 1
    assert launch.resolve_nproc(None, "cpu", 8) == 1
    assert launch.resolve_nproc(3, "cpu", 0) == 3


@pytest.fixture
def exec_calls(monkeypatch):
    """(command, config it names) of each torchrun run the CLI starts; the config file is
    temporary, gone once the workers finish."""
    calls: list[tuple[list[str], dict]] = []

    def fake_run(cmd):
        calls.append((cmd, json.loads(Path(cmd[-1]).read_text())))
        return 0

    monkeypatch.setattr(launch, "run_torchrun", fake_run)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    return calls


def invoke(*args: str):
    return CliRunner().invoke(app, ["train", *args])


def test_cli_writes_the_resolved_config_and_execs_torchrun(exec_calls, tmp_path):
    save = tmp_path / "ck"
    res = invoke(
        "--verifier-name-or-path", "some/model", "--save-path", str(save), "--epochs", "3",
        "--nproc-per-node", "2", "--device", "cpu",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    ((cmd, values),) = exec_calls
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2" and "--standalone" in cmd
    assert cmd[-2] == "--config" and not Path(cmd[-1]).exists()  # removed once the run ends
    written = TrainConfig(**values)
    assert (written.epochs, written.nproc_per_node, written.device) == (3, 2, "cpu")
    assert written.verifier_name_or_path == "some/model"
    assert not save.exists()  # nothing in --save-path before the workers accept the inputs


def test_config_file_with_overriding_flags(exec_calls, tmp_path):
    path = tmp_path / "c.json"
    save = tmp_path / "ck"
    values = {"verifier_name_or_path": "m", "save_path": str(save), "epochs": 7, "lr": 0.5}
    path.write_text(json.dumps(values | {"nproc_per_node": 2, "device": "cpu"}))
    res = invoke("--config", str(path), "--epochs", "2")
    assert res.exit_code == 0, res.output
    ((_, written),) = exec_calls
    assert (written["epochs"], written["lr"]) == (2, 0.5)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--nnodes", "2"], ["--nnodes", "--rdzv-endpoint"]),
        (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"], ["--node-rank"]),
        (["--nnodes", "2", "--rdzv-endpoint", "node0:port"], ["--rdzv-endpoint", "HOST:PORT"]),
        (["--rdzv-endpoint", "node0:70000"], ["--rdzv-endpoint", "1-65535"]),
        (["--rdzv-endpoint", ":29400"], ["--rdzv-endpoint"]),
        (["--nproc-per-node", "2", "--rows-per-step", "3"], ["--rows-per-step"]),
        (["--nproc-per-node", "2", "--device", "cuda"], ["--nproc-per-node", "GPU"]),
    ],
)
def test_bad_process_flags(exec_calls, tmp_path, args, names):
    pytest.importorskip("torch")
    import torch

    if "cuda" in args and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has two GPUs")
    res = invoke("--verifier-name-or-path", "m", "--save-path", str(tmp_path / "ck"), *args)
    assert res.exit_code == 2, res.output
    for name in names:
        assert name in res.output
    assert not exec_calls and not (tmp_path / "ck").exists()


def test_bad_config_file_is_named(exec_calls, tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    res = invoke("--config", str(path))
    assert res.exit_code == 2 and "--config" in res.output and "c.json" in res.output


def test_under_torchrun_the_command_trains_as_a_worker(monkeypatch, tmp_path):
    """`torchrun -m speculators train <flags>`: no second launch, the worker path runs."""
    from speculators.train import run

    seen: list[TrainConfig] = []
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setattr(launch, "run_torchrun", lambda cmd: pytest.fail("launched twice"))
    monkeypatch.setattr(run, "run_train", lambda config, progress: seen.append(config))
    res = invoke("--verifier-name-or-path", "m", "--save-path", str(tmp_path), "--epochs", "4")
    assert res.exit_code == 0, res.output
    assert [c.epochs for c in seen] == [4]
    assert not (tmp_path / "train_config.json").exists()
