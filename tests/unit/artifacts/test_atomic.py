"""Atomic outputs: a directory replaced under a kill at any moment is the old one or the new
one after recovery, temps of killed writers are cleaned, modes follow the umask, and a failing
write is one message naming the file."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from speculators.artifacts import atomic
from speculators.errors import UserInputError

REAL_RENAME = os.rename


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it."""


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def make(root: Path, name: str, text: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "weights").write_text(text)
    (root / name / "state").write_text(text)
    return root / name


def kill_before_rename(monkeypatch, n: int, parent: Path, frozen: Path) -> None:
    """Before the n-th os.rename (Path.rename uses it), copy `parent` as it is on disk at that
    moment to `frozen` and stop: `frozen` is what a rerun after a SIGKILL there finds."""
    calls = [0]

    def rename(src, dst, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            shutil.copytree(parent, frozen, symlinks=True)
            raise Killed
        return REAL_RENAME(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)


def count_renames(monkeypatch) -> list[int]:
    calls: list[int] = []

    def rename(src, dst, *args, **kwargs):
        calls.append(1)
        return REAL_RENAME(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    return calls


OLD = {"0/state": "old", "0/weights": "old"}
NEW = {"0/state": "new", "0/weights": "new"}


def test_replace_dir_killed_before_any_rename_recovers_the_old_or_the_new(tmp_path, monkeypatch):
    calls = count_renames(monkeypatch)
    parent = tmp_path / "whole"
    make(parent, "0", "old")
    atomic.replace_dir(make(parent, ".tmp-0.x", "new"), parent / "0")
    assert tree(parent) == NEW and len(calls) >= 3
    seen = []
    for n in range(1, len(calls) + 1):
        parent, frozen = tmp_path / f"run{n}", tmp_path / f"frozen{n}"
        make(parent, "0", "old")
        (parent / ".tmp-1.y").mkdir()  # a write cut off earlier
        kill_before_rename(monkeypatch, n, parent, frozen)
        with pytest.raises(Killed):
            atomic.replace_dir(make(parent, ".tmp-0.x", "new"), parent / "0")
        monkeypatch.setattr(os, "rename", REAL_RENAME)
        atomic.recover_dirs(frozen)
        atomic.remove_stale_temps(frozen)
        assert tree(frozen) in (OLD, NEW), n
        assert not [p.name for p in frozen.iterdir() if p.name.startswith(".")]
        seen.append(tree(frozen) == NEW)
    # Killed before the complete new dir got its `.ready-` name: old; after it: new.
    assert seen == sorted(seen) and seen[0] is False and seen[-1] is True


def test_retire_dir_never_leaves_a_half_deleted_dir_under_its_name(tmp_path, monkeypatch):
    parent = tmp_path / "p"
    make(parent, "3", "old")

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(Killed):
        atomic.retire_dir(parent / "3")
    assert not (parent / "3").exists()
    monkeypatch.undo()
    atomic.recover_dirs(parent)
    assert list(parent.iterdir()) == []


def test_stale_temps_are_removed_only_for_the_outputs_named(tmp_path):
    for name in (".tmp-d2t.npy.abc", ".tmp-t2d.npy.def", ".tmp-other.txt.123", "keep.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / ".tmp-0.xyz").mkdir()
    removed = atomic.remove_stale_temps(tmp_path, lambda name: name in ("d2t.npy", "t2d.npy"))
    assert sorted(p.name for p in removed) == [".tmp-d2t.npy.abc", ".tmp-t2d.npy.def"]
    atomic.remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_temp_dirs_get_the_umask_mode_not_owner_only(tmp_path):
    made = atomic.temp_dir_beside(tmp_path / "0")
    assert made.stat().st_mode & 0o777 == atomic.DIR_MODE
    atomic.replace_dir(made, tmp_path / "0")
    assert (tmp_path / "0").stat().st_mode & 0o777 == atomic.DIR_MODE


def test_a_full_disk_is_one_message_naming_the_file(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "out.bin").write_bytes(b"earlier")
    with pytest.raises(UserInputError, match=r"cannot write .*out\.bin: No space left"):
        atomic.atomic_write(tmp_path / "out.bin", full)
    assert (tmp_path / "out.bin").read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_file_where_a_directory_belongs_is_one_message(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match=r"cannot write .*file/out\.json"):
        atomic.atomic_write_json(tmp_path / "file" / "out.json", {})
