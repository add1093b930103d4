"""Atomic writes: files and directories are built under a temporary name beside the target,
then renamed into place, so a killed process leaves the old output or the new one, never half.

Names beside a target, by what a kill can leave behind:
- `.tmp-NAME.*`: being written; incomplete, removed by `remove_stale_temps`.
- `.ready-NAME`: a complete directory waiting to replace NAME; `recover_dirs` finishes the swap.
- `.old-NAME`: a replaced directory on its way out; `recover_dirs` deletes it.
Readers that glob for outputs never match these hidden names. A failing write (disk full,
permissions) is a UserInputError naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from speculators.errors import write_failure

# mkstemp/mkdtemp create owner-only entries; outputs get the usual umask-based modes instead,
# so that another user (a vLLM container) can read them.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK

TEMP_PREFIX = ".tmp-"
READY_PREFIX = ".ready-"
OLD_PREFIX = ".old-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}.", dir=target.parent)
    except OSError as e:
        raise write_failure(target, e) from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, FILE_MODE)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        raise write_failure(target, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(f)` on a binary file object whose contents replace `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def temp_dir_beside(target: Path) -> Path:
    """A new empty `.tmp-NAME.*` directory beside `target`, with the umask's mode."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{target.name}.", dir=target.parent))
        os.chmod(tmp, DIR_MODE)
    except OSError as e:
        raise write_failure(target, e) from e
    return tmp


def replace_dir(complete: Path, target: Path) -> None:
    """Put the complete directory `complete` (from `temp_dir_beside`) at `target`, replacing
    what is there. At every moment a kill leaves either the old `target` in place or the new
    one findable (as `target`, or as `.ready-NAME` for `recover_dirs` to finish)."""
    ready = target.with_name(READY_PREFIX + target.name)
    try:
        _remove(ready)  # a swap left unfinished is superseded by this newer directory
        complete.rename(ready)
        _fsync_dir(target.parent)
        _swap_in(ready, target)
    except OSError as e:
        raise write_failure(target, e) from e


def retire_dir(target: Path) -> None:
    """Delete the directory `target`: renamed to `.old-NAME` first, so a kill in the middle
    never leaves a half-deleted directory under its real name."""
    old = target.with_name(OLD_PREFIX + target.name)
    try:
        _remove(old)
        target.rename(old)
        _fsync_dir(target.parent)
        _remove(old)
    except OSError as e:
        raise write_failure(target, e) from e


def recover_dirs(parent: Path) -> None:
    """Finish what a killed `replace_dir` or `retire_dir` left in `parent`."""
    if not parent.is_dir():
        return
    for entry in sorted(parent.iterdir()):
        name = entry.name
        if name.startswith(READY_PREFIX):
            _swap_in(entry, parent / name.removeprefix(READY_PREFIX))
    for entry in parent.iterdir():
        if entry.name.startswith(OLD_PREFIX):
            _remove(entry)


def remove_stale_temps(parent: Path, owned: Callable[[str], bool] | None = None) -> list[Path]:
    """Delete the `.tmp-*` files and directories a killed writer left in `parent` (with `owned`,
    only the temps of outputs whose names it accepts); returns them. Only for outputs this
    command owns while it runs: two writers must not share one."""
    if not parent.is_dir():
        return []
    stale = [
        p
        for p in parent.iterdir()
        if p.name.startswith(TEMP_PREFIX)
        and (owned is None or owned(p.name.removeprefix(TEMP_PREFIX).rsplit(".", 1)[0]))
    ]
    for path in stale:
        _remove(path)
    return stale


def _swap_in(ready: Path, target: Path) -> None:
    old = target.with_name(OLD_PREFIX + target.name)
    if target.exists() or target.is_symlink():
        _remove(old)
        target.rename(old)
    ready.rename(target)
    _fsync_dir(target.parent)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make renames in `path` durable (a power cut, not only a kill, keeps them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. some network file systems); renames still happen
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
