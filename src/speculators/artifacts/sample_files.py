"""Where sample files are (SPEC §2: `data_{idx}.pt` in datagen's output dir), without reading
them: names, listing and the resume point. No torch, so completeness checks stay light."""

from __future__ import annotations

import re
from pathlib import Path

from speculators.artifacts.data_config import DATA_CONFIG_FILE

FILE_PATTERN = "data_{idx}.pt"
_FILE_RE = re.compile(r"^data_(\d+)\.pt$")


def sample_path(output_dir: Path, idx: int) -> Path:
    return output_dir / FILE_PATTERN.format(idx=idx)


def sample_index(path: Path) -> int | None:
    m = _FILE_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_sample_files(data_path: Path) -> list[Path]:
    """Every .pt sample under `data_path`, recursively, in a stable order (by dir, then index).

    In a directory with a data_config.json (datagen's) only `data_{idx}.pt` files are samples,
    so other files there (a token_freq.pt under any name) are never read as one. Hidden files
    and directories (temps of a killed writer) are skipped everywhere."""
    configured = {p.parent for p in data_path.rglob(DATA_CONFIG_FILE)}
    files = [
        p
        for p in data_path.rglob("*.pt")
        if not any(part.startswith(".") for part in p.relative_to(data_path).parts)
        and p.name != "token_freq.pt"
        and (p.parent not in configured or sample_index(p) is not None)
    ]

    def key(p: Path) -> tuple[str, int, str]:
        idx = sample_index(p)
        return (str(p.parent), -1 if idx is None else idx, p.name)

    return sorted(files, key=key)


def first_missing_index(output_dir: Path, num_samples: int) -> int:
    """Where a resumed datagen run starts: the first index in [0, num_samples) with no file."""
    for idx in range(num_samples):
        if not sample_path(output_dir, idx).is_file():
            return idx
    return num_samples
