"""`speculators vocab` never builds a mapping from counts it cannot tie to the verifier, never
replaces a mapping it did not make, and a kill between its two files is undone by a rerun."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from speculators.artifacts.token_freq import TokenFreqMeta, meta_path, save_token_freq
from speculators.cli import app

COUNTS = {0: 10, 5: 3, 7: 3, 9: 1}


def meta(**kw) -> TokenFreqMeta:
    values = dict(
        fingerprint="f" * 32, target_model_path="./verifier-a", train_data_path="d.jsonl",
        vocab_size=12, num_samples=2, num_tokens=17, tokenizer=None,
    )  # fmt: skip
    return TokenFreqMeta(**(values | kw))


def vocab(freq: Path, out: Path, *extra: str, target: str = "--target-vocab-size=12"):
    args = ["vocab", "--token-freq-path", str(freq), "--draft-vocab-size", "3", target]
    res = CliRunner().invoke(app, [*args, "--output-path", str(out), *extra])
    return res.exit_code, " ".join(res.output.split())


def snapshot(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


@pytest.fixture
def recorded(tmp_path) -> Path:
    path = tmp_path / "token_freq.pt"
    save_token_freq(path, COUNTS, meta())
    return path


def test_the_record_inside_the_file_is_checked_without_any_sidecar(tmp_path):
    path = tmp_path / "token_freq.pt"
    save_token_freq(path, COUNTS, meta(vocab_size=50))  # counted with another tokenizer
    code, out = vocab(path, tmp_path / "out")
    assert code == 2 and "tokenizer of 50 tokens" in out and "./verifier-a" in out
    assert not (tmp_path / "out").exists()


def test_counts_without_a_record_need_the_flag(tmp_path):
    path = tmp_path / "token_freq.pt"
    torch.save(COUNTS, path)  # the reference tools' file
    code, out = vocab(path, tmp_path / "out")
    assert code == 2 and "--allow-unrecorded-token-freq" in out and "token_freq.pt" in out
    assert not (tmp_path / "out").exists()
    code, out = vocab(path, tmp_path / "out", "--allow-unrecorded-token-freq")
    assert code == 0 and "no record of its tokenizer" in out


def test_a_sidecar_of_other_counts_is_not_trusted(tmp_path):
    path = tmp_path / "token_freq.pt"
    torch.save(COUNTS, path)
    meta_path(path).write_text(json.dumps(meta(num_tokens=99).model_dump()))
    code, out = vocab(path, tmp_path / "out")
    assert code == 2 and "describes other counts" in out


def test_counts_of_another_tokenizer_are_refused_naming_both(tiny_llama, tmp_path):
    from transformers import AutoConfig

    size = AutoConfig.from_pretrained(tiny_llama).vocab_size
    path = tmp_path / "token_freq.pt"
    save_token_freq(path, COUNTS, meta(vocab_size=size, tokenizer="0" * 32))
    code, out = vocab(path, tmp_path / "out", target=f"--target-model-path={tiny_llama}")
    assert code == 2 and "./verifier-a" in out and str(tiny_llama) in out and "token ids" in out


def test_empty_counts_are_refused_and_earlier_outputs_kept(tmp_path, recorded):
    out_dir = tmp_path / "out"
    assert vocab(recorded, out_dir)[0] == 0
    before = snapshot(out_dir)
    empty = tmp_path / "empty.pt"
    torch.save({}, empty)
    code, out = vocab(empty, out_dir, "--overwrite")
    assert code == 2 and "empty.pt counts no tokens" in out
    assert snapshot(out_dir) == before


def test_a_different_mapping_is_not_replaced_without_overwrite(tmp_path, recorded):
    out_dir = tmp_path / "out"
    assert vocab(recorded, out_dir)[0] == 0
    before = snapshot(out_dir)
    assert vocab(recorded, out_dir)[0] == 0  # the same mapping again: nothing to protect
    assert snapshot(out_dir) == before
    bigger = ["vocab", "--token-freq-path", str(recorded), "--draft-vocab-size", "5"]
    res = CliRunner().invoke(
        app, [*bigger, "--target-vocab-size", "12", "--output-path", str(out_dir)]
    )
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "d2t.npy and t2d.npy" in text and "--overwrite" in text
    assert snapshot(out_dir) == before
    res = CliRunner().invoke(
        app, [*bigger, "--target-vocab-size", "12", "--output-path", str(out_dir), "--overwrite"]
    )
    assert res.exit_code == 0 and np.load(out_dir / "t2d.npy").sum() == 5


def test_an_output_path_that_is_a_file(tmp_path, recorded):
    (tmp_path / "out").write_text("mine")
    code, out = vocab(recorded, tmp_path / "out")
    assert code == 2 and "--output-path" in out and "is a file" in out
    assert (tmp_path / "out").read_text() == "mine"


class Killed(BaseException):
    pass


@pytest.mark.parametrize("overwrite", [False, True])
def test_killed_between_its_two_files_a_rerun_gives_the_same_outputs(
    tmp_path, recorded, monkeypatch, overwrite
):
    reference = tmp_path / "reference"
    assert vocab(recorded, reference)[0] == 0
    out_dir, frozen = tmp_path / "out", tmp_path / "frozen"
    extra = ["--overwrite"] if overwrite else []
    if overwrite:  # an earlier, different mapping is being replaced
        shutil.copytree(reference, out_dir)
        np.save(out_dir / "t2d.npy", np.ones(12, dtype=bool))
        np.save(out_dir / "d2t.npy", np.zeros(12, dtype=np.int64))
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith("t2d.npy"):  # d2t.npy is in place, t2d.npy not yet
            shutil.copytree(out_dir, frozen)
            raise Killed
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        vocab_run = CliRunner().invoke
        res = vocab_run(
            app,
            ["vocab", "--token-freq-path", str(recorded), "--draft-vocab-size", "3",
             "--target-vocab-size", "12", "--output-path", str(out_dir), *extra],
            catch_exceptions=False,
        )  # fmt: skip
        raise AssertionError(res.output)
    monkeypatch.setattr(os, "replace", real)
    code, out = vocab(recorded, frozen, *extra)  # the same command, on the disk as killed
    assert code == 0, out
    assert snapshot(frozen) == snapshot(reference)
