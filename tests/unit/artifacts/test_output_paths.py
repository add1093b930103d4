"""Output locations are checked before any work: a file where a directory belongs, a path
below a file, a directory where a file belongs, or no write permission is one message naming
the flag."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from speculators.artifacts.output_paths import check_output_dir, check_output_file
from speculators.errors import UserInputError


def test_a_writable_or_creatable_dir_passes(tmp_path):
    check_output_dir(tmp_path, "--output-dir")
    check_output_dir(tmp_path / "new" / "deeper", "--output-dir")
    check_output_file(tmp_path / "new" / "token_freq.pt", "--token-freq-path")
    assert list(tmp_path.iterdir()) == []  # checking creates nothing


def test_a_file_is_not_a_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserInputError, match=r"--save-path .*f is a file, not a directory"):
        check_output_dir(tmp_path / "f", "--save-path")
    with pytest.raises(UserInputError, match=r"--save-path .*f/sub: .*f is a file"):
        check_output_dir(tmp_path / "f" / "sub", "--save-path")
    with pytest.raises(UserInputError, match=r"--token-freq-path .*f/t\.pt: .*f is a file"):
        check_output_file(tmp_path / "f" / "t.pt", "--token-freq-path")


def test_a_dir_is_not_a_file(tmp_path):
    with pytest.raises(UserInputError, match="--token-freq-path .* is a directory"):
        check_output_file(tmp_path, "--token-freq-path")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UserInputError, match="--output-path .*locked is not writable"):
        check_output_dir(locked / "vocab", "--output-path")


def test_a_dir_that_cannot_be_created_whatever_access_says():
    """/proc takes no new directories, for root too, though access() says it may be written."""
    with pytest.raises(UserInputError, match=r"--save-path /proc/speculators-x/y: cannot create"):
        check_output_dir(Path("/proc/speculators-x/y"), "--save-path")
