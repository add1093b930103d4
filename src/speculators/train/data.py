"""Training data: datagen's sample files, checked and split (`index_data`), and the packed rows
of T tokens that `train.packing` chose, read into tensors (`PackedRows`) by the loader.

A packed row holds whole documents one after another (truncated to T if longer), each with its
own positions from 0 and its own document id; padding has document id -1 and loss mask 0.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from speculators.artifacts.sample_files import list_sample_files
from speculators.artifacts.samples import FP8, check_finite, load_sample
from speculators.errors import UserInputError


@dataclass
class DataIndex:
    """Every sample file with its length, and the train/validation split."""

    files: list[Path]
    lengths: list[int]
    train: list[int]
    val: list[int]
    num_aux_layers: int
    hidden_size: int
    fp8: bool = False  # every file stores fp8 states: the loader keeps them so (see PackedRows)


def _corrupt(path: Path, e: Exception) -> UserInputError:
    return UserInputError(
        f"sample file {path} is corrupt or not a speculators sample ({e.__class__.__name__}: "
        f"{e}). Delete it and rerun `speculators datagen` to regenerate it."
    )


def _scan(path: Path, data_format_version: int) -> tuple[int, int, int, bool]:
    """(length, number of aux layers, hidden size, fp8 or not) of one file, read via mmap
    (cheap)."""
    try:
        try:
            record = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in torch's legacy (non-zip) format cannot be mmapped
            record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise _corrupt(path, e) from None
    if isinstance(record, dict) and record and all(isinstance(k, int) for k in record):
        raise UserInputError(
            f"{path} is a token-frequency file (token id -> count), not a sample. Move it out "
            "of --data-path, or keep it beside datagen's data_config.json: in such a directory "
            "only data_{idx}.pt files are read."
        )
    try:
        length = int(record["input_ids"].shape[0])
        if "hidden_states" in record:
            found, states = 1, record["hidden_states"]
            num_aux, hidden = len(states) - 1, int(states[-1].shape[-1])
        else:
            found, hidden = 0, int(record["target"].shape[-1])
            num_aux = int(record["hidden_state"].shape[-1]) // hidden
    except Exception as e:
        raise _corrupt(path, e) from None
    if found != data_format_version:
        raise UserInputError(
            f"sample file {path} is data format version {found}, but --data-format-version is "
            f"{data_format_version}. Pass --data-format-version {found}."
        )
    return length, num_aux, hidden, "hidden_states_scale" in record


def index_data(
    data_path: Path, data_format_version: int, val_fraction: float, seed: int
) -> DataIndex:
    """Find and check every sample under `data_path`; hold out `val_fraction` of them."""
    files = list_sample_files(data_path) if data_path.is_dir() else []
    if not files:
        raise UserInputError(
            f"--data-path {data_path}: no .pt sample files found (searched recursively). Point "
            "it at the --output-dir of `speculators datagen`."
        )
    lengths, shapes, fp8 = [], set(), []
    for path in files:
        length, num_aux, hidden, is_fp8 = _scan(path, data_format_version)
        lengths.append(length)
        fp8.append(is_fp8)
        shapes.add((num_aux, hidden))
        if len(shapes) > 1:
            raise UserInputError(
                f"sample file {path} has {num_aux} aux layers of size {hidden}, unlike the "
                f"files before it ({sorted(shapes)}): --data-path mixes data from different "
                "verifiers or layer choices. Use one datagen output per training run."
            )
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    num_val = math.ceil(val_fraction * len(files)) if len(files) > 1 else 0
    num_aux, hidden = shapes.pop()
    return DataIndex(
        files, lengths, order[num_val:], sorted(order[:num_val]), num_aux, hidden, all(fp8)
    )


class PackedRows(Dataset):
    """Row r -> one packed row of tensors. A bad file gives {"error": message} instead of
    raising, so the main process can stop with a clean error rather than a worker traceback.
    Rows in `padding` get a zero loss mask (they only keep a rank in step with the others).

    `fp8` (every file stores fp8 states): the row keeps them fp8, with their scales as
    "aux_scale" [T, k] and "last_scale" [T], and the trainer converts them on its device
    (artifacts.samples.dequantize_fp8_rows): half the bytes through the loader and to the GPU,
    and no conversion on the host, where it costs more than the file read."""

    def __init__(
        self,
        files: list[Path],
        rows: list[list[int]],
        total_seq_len: int,
        version: int,
        padding: set[int] | None = None,
        fp8: bool = False,
    ) -> None:
        self.files, self.rows, self.total_seq_len, self.version = (
            files,
            rows,
            total_seq_len,
            version,
        )
        self.padding = padding or set()
        self.fp8 = fp8

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, r: int) -> dict[str, Any]:
        try:
            return self._row(r)
        except UserInputError as e:
            return {"error": str(e)}

    def _row(self, r: int) -> dict[str, Any]:
        """Each file's tensors are copied once, from the page cache straight into the row. In
        a loader worker the row is allocated in shared memory, which is how the DataLoader
        hands it to the main process (a plain tensor would be copied there once more)."""
        files = [self.files[i] for i in self.rows[r]]
        samples = [
            load_sample(path, self.version, mmap=True, dequantize=not self.fp8) for path in files
        ]
        t, h = self.total_seq_len, samples[0].last_hidden_state.shape[1]
        k = len(samples[0].aux_hidden_states)
        row = _new_row(t, k, h, self.fp8)
        start = 0
        for d, (path, s) in enumerate(zip(files, samples)):
            n = min(s.input_ids.shape[0], t - start)
            span = slice(start, start + n)
            row["input_ids"][span], row["loss_mask"][span] = s.input_ids[:n], s.loss_mask[:n]
            row["doc_ids"][span], row["position_ids"][span] = d, torch.arange(n)
            for j, aux in enumerate(s.aux_hidden_states):
                _copy(row["aux_hidden_states"][span, j * h : (j + 1) * h], aux[:n])
            _copy(row["last_hidden_state"][span], s.last_hidden_state[:n])
            check_finite(path, row["aux_hidden_states"][span])
            check_finite(path, row["last_hidden_state"][span])
            if self.fp8:
                assert s.aux_scales is not None and s.last_scale is not None
                for j, scale in enumerate(s.aux_scales):
                    row["aux_scale"][span, j] = scale[:n]
                row["last_scale"][span] = s.last_scale[:n]
                check_finite(path, row["aux_scale"][span])
                check_finite(path, row["last_scale"][span])
            start += n
        for name in ("input_ids", "loss_mask", "position_ids"):
            row[name][start:] = 0
        row["doc_ids"][start:] = -1  # padding
        for name in ("aux_hidden_states", "last_hidden_state", "aux_scale", "last_scale"):
            if name in row:
                _bits(row[name])[start:] = 0  # 0 in bf16, fp8 and fp32 alike
        if r in self.padding:
            row["loss_mask"].zero_()
        return row


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`'s bytes as integers of its width (fp8 fills and copies are not implemented on
    every CPU build; integer ones are)."""
    if tensor.dtype == FP8:
        return tensor.view(torch.uint8)
    return tensor


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    _bits(dst).copy_(_bits(src))


def _new_row(t: int, k: int, h: int, fp8: bool = False) -> dict[str, torch.Tensor]:
    states = FP8 if fp8 else torch.bfloat16
    shapes = {
        "input_ids": ((t,), torch.long),
        "loss_mask": ((t,), torch.long),
        "doc_ids": ((t,), torch.long),
        "position_ids": ((t,), torch.long),
        "aux_hidden_states": ((t, k * h), states),
        "last_hidden_state": ((t, h), states),
    }
    if fp8:
        shapes |= {"aux_scale": ((t, k), torch.float32), "last_scale": ((t,), torch.float32)}
    shared = torch.utils.data.get_worker_info() is not None
    return {name: _empty(shape, dtype, shared) for name, (shape, dtype) in shapes.items()}


def _empty(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor, in shared memory if `shared` (allocated there, as torch's own
    default_collate does in workers; `share_memory_()` would copy it)."""
    if not shared:
        return torch.empty(shape, dtype=dtype)
    numel = 1
    for d in shape:
        numel *= d
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(numel)
    return proto.new(storage).view(shape)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [it["error"] for it in items if "error" in it]
    if errors:
        return {"error": errors[0]}
    if len(items) == 1:  # the loader's one row per batch: a view, not a copy
        return {k: v.unsqueeze(0) for k, v in items[0].items()}
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def make_loader(dataset: PackedRows, num_workers: int, pin_memory: bool, seed: int) -> DataLoader:
    """One packed row per batch, in the dataset's (already shuffled) order."""
    return DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )
