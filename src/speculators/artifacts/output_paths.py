"""Output locations, checked before any work starts: a path that cannot be written (a file
where a directory belongs, no permission, a read-only file system) is one message naming the
flag, not a traceback after an epoch of training."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from speculators.errors import UserInputError


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: Path, flag: str, shown: Path | None = None) -> None:
    """`path` is, or can be created as, a directory this process may write into. Messages
    name `shown` (the flag's value) when given, else `path`."""
    where = Path(os.path.abspath(path))
    existing = _nearest_existing(where)
    if not existing.is_dir():
        if existing == where and shown is None:
            raise UserInputError(
                f"{flag} {path} is a file, not a directory. Pass a directory path (or move the "
                "file away)."
            )
        raise UserInputError(
            f"{flag} {shown or path}: {existing} is a file, so nothing can be written below it. "
            "Pass another path (or move the file away)."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(
            f"{flag} {shown or path}: {existing} is not writable by this user (or is on a "
            "read-only file system). Pass a location you may write to, or fix its permissions."
        )
    if existing != where:  # what access() cannot tell (root on /proc, say): try, leave nothing
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".speculators-probe-", dir=existing))
        except OSError as e:
            raise UserInputError(
                f"{flag} {shown or path}: cannot create it ({e.strerror} in {existing}). Pass a "
                "location you may write to."
            ) from None


def check_output_file(path: Path, flag: str) -> None:
    """`path` can be written as a file: not a directory, in a directory we may write into."""
    if Path(path).is_dir():
        raise UserInputError(f"{flag} {path} is a directory; pass the path of a file.")
    check_output_dir(Path(path).parent, flag, shown=path)
