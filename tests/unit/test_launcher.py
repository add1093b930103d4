"""The torchrun launcher every multi-process command uses (speculators.launcher): the torchrun
line, the GPUs counted without torch, and how a worker process ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from speculators import launcher as launch


def test_single_node_command():
    cmd = launch.torchrun_command(Path("/ck/train_config.json"), 4, python="/py")
    assert cmd == [
        "/py", "-m", "torch.distributed.run", "--nproc-per-node", "4", "--standalone",
        "-m", "speculators", "train", "--config", "/ck/train_config.json",
    ]  # fmt: skip


def test_multi_node_command_uses_torchruns_c10d_rendezvous():
    node = lambda r: launch.torchrun_command(  # noqa: E731
        Path("/shared/ck/train_config.json"), 8, 2, r, "node0:29400", python="/py"
    )
    cmd = node(1)
    assert "--standalone" not in cmd
    opt = lambda name: cmd[cmd.index(name) + 1]  # noqa: E731
    assert (opt("--nproc-per-node"), opt("--nnodes"), opt("--node-rank")) == ("8", "2", "1")
    assert (opt("--rdzv-backend"), opt("--rdzv-endpoint")) == ("c10d", "node0:29400")
    rdzv_id = lambda c: c[c.index("--rdzv-id") + 1]  # noqa: E731
    assert rdzv_id(node(0)) == rdzv_id(node(1))  # both nodes join the same rendezvous
    assert cmd[-5:] == ["-m", "speculators", "train", "--config", "/shared/ck/train_config.json"]


def test_gpus_are_counted_without_torch(monkeypatch):
    """CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`, else none."""
    listing = "GPU 0: NVIDIA H200 (UUID: GPU-a)\n  MIG 1g.18gb Device 0: (UUID: MIG-b)\nGPU 1: x\n"
    runs: list[list[str]] = []

    def fake_run(cmd, **kwargs):
        runs.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=listing)

    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    assert launch.gpu_count({}) == 2 and runs == [["nvidia-smi", "-L"]]
    assert launch.gpu_count({"CUDA_VISIBLE_DEVICES": "3"}) == 1 and len(runs) == 1

    def missing(cmd, **kwargs):
        raise FileNotFoundError(cmd[0])

    monkeypatch.setattr(launch.subprocess, "run", missing)
    assert launch.gpu_count({}) == 0


def test_the_command_is_named():
    cmd = launch.torchrun_command(Path("/c.json"), 2, python="/py", command="datagen")
    assert cmd[-4:] == ["speculators", "datagen", "--config", "/c.json"]


WORKER = """
import atexit, sys
from speculators.launcher import run_worker
atexit.register(lambda: print("interpreter shutdown ran"))
def main():
    print("the command's output")  # block-buffered: stdout is a pipe
    {body}
run_worker(main)
"""


def run_worker_process(body: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WORKER.format(body=body)], capture_output=True, text=True
    )


def test_a_worker_ends_with_its_commands_exit_code_and_output_without_interpreter_shutdown():
    cases = {
        "pass": 0,
        "raise SystemExit(0)": 0,
        "raise SystemExit(2)": 2,
        "raise SystemExit('error: bad flag')": 1,
        "raise RuntimeError('boom')": 1,
        "raise KeyboardInterrupt": 130,
    }
    for body, code in cases.items():
        proc = run_worker_process(body)
        assert proc.returncode == code, (body, proc.stderr)
        assert proc.stdout == "the command's output\n", body  # flushed; atexit never ran
    assert "error: bad flag" in run_worker_process("raise SystemExit('error: bad flag')").stderr
    crashed = run_worker_process("raise RuntimeError('boom')").stderr
    assert "Traceback" in crashed and "RuntimeError: boom" in crashed


def test_processes_that_cannot_meet_are_one_message_naming_the_endpoint(monkeypatch, capsys):
    """A rendezvous that fails (a node name that does not resolve, a port taken) ends the command
    with exit 2 and the flag named, not torchrun's traceback."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError

    def fail(args):
        try:
            raise OSError("Name or service not known")
        except OSError as e:
            raise RendezvousConnectionError("The connection to the C10d store has failed.") from e

    monkeypatch.setattr(torchrun, "run", fail)
    cmd = launch.torchrun_command(Path("/ck/c.json"), 2, 2, 1, "nowhere:29400", python="/py")
    assert launch.run_torchrun(cmd) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --rdzv-endpoint nowhere:29400: the processes could not meet")
    assert "Name or service not known" in err and err.count("\n") == 1
    assert launch.run_torchrun(launch.torchrun_command(Path("/c.json"), 2, python="/py")) == 2
    assert "could not meet on this machine" in capsys.readouterr().err
