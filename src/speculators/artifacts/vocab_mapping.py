"""d2t.npy / t2d.npy: the draft <-> target vocabulary mapping (SPEC §2).

`d2t` is int64 [Vd] of offsets: target_id = draft_id + d2t[draft_id].
`t2d` is bool [V], True for target ids in the draft vocab; t2d.sum() == Vd.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speculators.artifacts.atomic import atomic_path
from speculators.errors import UserInputError

D2T_FILE = "d2t.npy"
T2D_FILE = "t2d.npy"


def save_vocab_mapping(output_dir: Path, d2t: np.ndarray, t2d: np.ndarray) -> tuple[Path, Path]:
    assert d2t.dtype == np.int64 and t2d.dtype == np.bool_
    assert int(t2d.sum()) == d2t.shape[0]
    paths = output_dir / D2T_FILE, output_dir / T2D_FILE
    for path, arr in zip(paths, (d2t, t2d)):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    return paths


def draft_to_target_ids(d2t: np.ndarray) -> np.ndarray:
    """The target id of every draft id, ascending."""
    return np.arange(d2t.shape[0], dtype=np.int64) + d2t


def _load(path: Path, flag: str) -> np.ndarray:
    if not path.is_file():
        raise UserInputError(
            f"{flag} {path} does not exist. Make the d2t/t2d mapping with `speculators vocab "
            "--token-freq-path token_freq.pt --draft-vocab-size N --target-model-path MODEL "
            "--output-path DIR` and pass DIR/d2t.npy and DIR/t2d.npy."
        )
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserInputError(f"{flag} {path} is not a readable .npy file: {e}") from None


def load_vocab_mapping(
    d2t_path: Path, t2d_path: Path, target_vocab_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load and cross-check d2t/t2d; with `target_vocab_size`, check them against the verifier."""
    d2t = _load(d2t_path, "--d2t-path")
    t2d = _load(t2d_path, "--t2d-path")
    if d2t.ndim != 1 or not np.issubdtype(d2t.dtype, np.integer):
        raise UserInputError(f"--d2t-path {d2t_path} must be a 1-D integer array, got {d2t.dtype}.")
    if t2d.ndim != 1 or t2d.dtype != np.bool_:
        raise UserInputError(f"--t2d-path {t2d_path} must be a 1-D bool array, got {t2d.dtype}.")
    d2t = d2t.astype(np.int64)
    target_ids = draft_to_target_ids(d2t)
    if int(t2d.sum()) != d2t.shape[0]:
        raise UserInputError(
            f"d2t ({d2t_path}) has {d2t.shape[0]} draft ids but t2d ({t2d_path}) marks "
            f"{int(t2d.sum())}: the two files come from different `speculators vocab` runs. "
            "Pass a matching pair."
        )
    if target_ids.size and (
        target_ids.min() < 0 or target_ids.max() >= t2d.shape[0] or not t2d[target_ids].all()
    ):
        raise UserInputError(
            f"d2t ({d2t_path}) and t2d ({t2d_path}) disagree on which target ids are in the draft "
            "vocab: they come from different `speculators vocab` runs. Pass a matching pair."
        )
    if target_vocab_size is not None and t2d.shape[0] != target_vocab_size:
        raise UserInputError(
            f"t2d ({t2d_path}) covers a vocab of {t2d.shape[0]} tokens but the verifier has "
            f"{target_vocab_size}. Rebuild the mapping with `speculators vocab --target-model-path "
            "<verifier>`."
        )
    return d2t, t2d
