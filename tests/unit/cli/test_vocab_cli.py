"""`speculators vocab` end to end through the CLI, including every bad input of issue 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from speculators.cli import app
from speculators.cli.common import expand_multi_value_flags


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def freq(tmp_path):
    """A token_freq.pt as the reference tools write it: no record of its tokenizer."""
    path = tmp_path / "token_freq.pt"
    torch.save({0: 10, 5: 3, 7: 3, 9: 1}, path)
    return path


UNRECORDED = "--allow-unrecorded-token-freq"


def test_cli_writes_numpy_files(tmp_path, freq):
    out = tmp_path / "mapping"
    res = invoke(
        "vocab",
        "--token-freq-path",
        str(freq),
        "--draft-vocab-size",
        "3",
        "--target-vocab-size",
        "12",
        "--output-path",
        str(out),
        UNRECORDED,
    )
    assert res.exit_code == 0, res.output
    d2t, t2d = np.load(out / "d2t.npy"), np.load(out / "t2d.npy")
    assert d2t.tolist() == [0, 4, 5] and d2t.dtype == np.int64
    assert t2d.dtype == np.bool_ and t2d.nonzero()[0].tolist() == [0, 5, 7]
    assert "distinct tokens seen" in res.output and "94.12%" in res.output  # 16 of 17 tokens


def test_console_script_and_module_entry(tmp_path, freq):
    out = tmp_path / "m"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "speculators",
            "vocab",
            "--token-freq-path",
            str(freq),
            "--draft-vocab-size",
            "2",
            "--target-vocab-size",
            "10",
            "--output-path",
            str(out),
            UNRECORDED,
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert np.load(out / "t2d.npy").sum() == 2
    version = subprocess.run(
        [sys.executable, "-m", "speculators", "--version"], capture_output=True, text=True
    )
    assert version.stdout.startswith("speculators ")


BAD = {
    "missing freq file": (
        ["--token-freq-path", "{tmp}/nope.pt", "--target-vocab-size", "10"],
        "does not exist",
    ),
    "freq path is a directory": (
        ["--token-freq-path", "{tmp}", "--target-vocab-size", "10"],
        "is a directory, not a file",
    ),
    "draft size zero": (
        ["--draft-vocab-size", "0", "--target-vocab-size", "10"],
        "--draft-vocab-size",
    ),
    "draft size too big": (
        ["--draft-vocab-size", "11", "--target-vocab-size", "10"],
        "--draft-vocab-size 11 is larger",
    ),
    "both target flags": (
        ["--target-vocab-size", "10", "--target-model-path", "{tmp}"],
        "exactly one of --target-vocab-size or --target-model-path",
    ),
    "neither target flag": ([], "exactly one of --target-vocab-size or --target-model-path"),
    "unreadable model path": (["--target-model-path", "{tmp}/no-model"], "--target-model-path"),
    "id beyond vocab": (["--target-vocab-size", "8"], "token id 9, which is outside"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, freq, case):
    args, message = BAD[case]
    out = tmp_path / "out"
    out.mkdir()
    (out / "d2t.npy").write_bytes(b"keep me")
    args = [a.format(tmp=tmp_path) for a in args]
    if "--token-freq-path" not in args:
        args += ["--token-freq-path", str(freq)]
    if "--draft-vocab-size" not in args:
        args += ["--draft-vocab-size", "2"]
    res = invoke("vocab", *args, "--output-path", str(out), UNRECORDED)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert (out / "d2t.npy").read_bytes() == b"keep me" and not (out / "t2d.npy").exists()


@pytest.mark.parametrize("content", [[1, 2, 3], {"a": 1}, {1: 2.5}, b"garbage"])
def test_freq_file_that_is_not_a_dict_of_ints(tmp_path, content):
    path = tmp_path / "token_freq.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    res = invoke(
        "vocab",
        "--token-freq-path",
        str(path),
        "--draft-vocab-size",
        "2",
        "--target-vocab-size",
        "10",
        "--output-path",
        str(tmp_path / "o"),
    )
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "token frequency file" in text and "token_freq.pt" in text and "Traceback" not in text
    assert not (tmp_path / "o").exists()


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys; from speculators.cli import app; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "False"


def test_multi_value_flags_are_expanded():
    argv = ["datagen", "--layer-ids", "2", "28", "54", "--seed", "3"]
    assert expand_multi_value_flags(argv) == [
        "datagen",
        "--layer-ids",
        "2",
        "--layer-ids",
        "28",
        "--layer-ids",
        "54",
        "--seed",
        "3",
    ]
