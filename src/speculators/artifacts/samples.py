"""What a sample file `data_{idx}.pt` holds (SPEC §2): one verifier forward pass over one
conversation. Names and listing: artifacts/sample_files.py.

Version 1 (written): {"input_ids": long [L], "hidden_states": [bf16 [L, H], ...] one per layer id,
aux layers first and the last layer last, "loss_mask": long [L]}.
With `--hidden-states-dtype fp8` the hidden states are float8_e4m3fn and the record holds
"hidden_states_scale": [fp32 [L], ...], one scale per row (token) of each: value = fp8 * scale,
scale = the row's largest magnitude / 448 (e4m3's largest finite value). Half the bytes; readers
get bf16 back (`load_sample`), or the fp8 values and scales as stored (`dequantize=False`: the
training loader, which leaves the conversion to the GPU).
Version 0 (read only): {"input_ids", "loss_mask", "hidden_state": [L, k*H] aux concatenated,
"target": [L, H] last layer}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from speculators.artifacts.atomic import atomic_torch_save
from speculators.errors import UserInputError


@dataclass
class Sample:
    """One sample in memory, whatever its file version: aux layers and the last layer apart."""

    input_ids: torch.Tensor  # long [L]
    aux_hidden_states: list[torch.Tensor]  # k x [L, H]
    last_hidden_state: torch.Tensor  # [L, H], pre-norm output of the verifier's last layer
    loss_mask: torch.Tensor  # long [L]
    # fp8 files read with dequantize=False: the states above are float8_e4m3fn and these are
    # their fp32 row scales (value = fp8 * scale); None for bf16 states.
    aux_scales: list[torch.Tensor] | None = None  # k x [L]
    last_scale: torch.Tensor | None = None  # [L]

    @property
    def is_fp8(self) -> bool:
        return self.last_scale is not None

    @property
    def scales(self) -> list[torch.Tensor]:
        """Every row scale (aux layers, then the last); none for bf16 states."""
        return [
            *(self.aux_scales or []),
            *([self.last_scale] if self.last_scale is not None else []),
        ]


FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
HIDDEN_DTYPES = ("bf16", "fp8")


def quantize_fp8(hidden_LH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 [L, H], fp32 scale [L]): each row scaled so that its largest magnitude is e4m3's
    largest value, which keeps e4m3's relative precision (3 mantissa bits) for every row
    whatever its range. An all-zero row gets scale 1."""
    h = hidden_LH.float()
    amax = h.abs().amax(-1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (h / scale[:, None]).to(FP8), scale


def dequantize_fp8(q_LH: torch.Tensor, scale_L: torch.Tensor) -> torch.Tensor:
    return dequantize_fp8_rows(q_LH, scale_L[:, None], torch.bfloat16)


def dequantize_fp8_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Packed fp8 states [..., k*H] with their row scales [..., k] (k layers side by side, as
    the training loader packs them) -> `dtype`, each value fp8 * scale computed in fp32 (the
    numbers `dequantize_fp8` gives, then cast)."""
    k = scale.shape[-1]
    values = q.float().unflatten(-1, (k, q.shape[-1] // k)) * scale.float()[..., None]
    return values.flatten(-2).to(dtype)


def save_sample(
    path: Path,
    input_ids: torch.Tensor,
    hidden_states: list[torch.Tensor],
    loss_mask: torch.Tensor,
    hidden_dtype: str = "bf16",
) -> None:
    """Write a version-1 sample atomically, its hidden states in bf16 or fp8 (`hidden_dtype`).
    Each tensor is stored on its own storage, so the file holds [L, H] and not a view of a
    larger batch tensor."""
    length = input_ids.shape[0]
    assert loss_mask.shape == (length,) and hidden_dtype in HIDDEN_DTYPES
    assert all(h.shape[0] == length and h.ndim == 2 for h in hidden_states)
    record: dict[str, object] = {"input_ids": _compact(input_ids, torch.long)}
    if hidden_dtype == "fp8":
        quantized = [quantize_fp8(h) for h in hidden_states]
        record["hidden_states"] = [q for q, _ in quantized]
        record["hidden_states_scale"] = [scale for _, scale in quantized]
    else:
        record["hidden_states"] = [_compact(h, torch.bfloat16) for h in hidden_states]
    record["loss_mask"] = _compact(loss_mask, torch.long)  # SPEC's order: the file's bytes too
    atomic_torch_save(path, record)


def _compact(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` on the CPU in `dtype`, copied only if it does not already span exactly its
    storage (torch.save writes a tensor's whole storage, so a view would drag the batch along)."""
    tensor = tensor.to("cpu", dtype)
    whole = tensor.numel() * tensor.element_size() == tensor.untyped_storage().nbytes()
    if tensor.is_contiguous() and tensor.storage_offset() == 0 and whole:
        return tensor
    return tensor.clone()


def _fail(path: Path, why: str) -> UserInputError:
    return UserInputError(
        f"sample file {path} is corrupt or not a speculators sample ({why}). Delete it and rerun "
        "`speculators datagen` with the same flags to regenerate it."
    )


def load_sample(
    path: Path, data_format_version: int = 1, mmap: bool = False, dequantize: bool = True
) -> Sample:
    """Read a sample file of either version; a bad file is a UserInputError naming it.

    `mmap`: the tensors stay in the page cache until read (the training loader copies them
    once, straight into its packed row, and checks them for NaN/Inf there: `check_finite`).
    `dequantize=False`: fp8 states come back as stored, with their scales (Sample.is_fp8)."""
    try:
        record = _load(path, mmap)
    except Exception as e:  # torch raises many types for corrupt files
        raise _fail(path, f"{e.__class__.__name__}: {e}") from None
    if not isinstance(record, dict):
        raise _fail(path, f"holds a {type(record).__name__}, not a dict")
    found = 1 if "hidden_states" in record else 0 if "hidden_state" in record else None
    if found is None:
        raise _fail(path, f"keys {sorted(record)}")
    if found != data_format_version:
        raise UserInputError(
            f"sample file {path} is data format version {found}, but --data-format-version is "
            f"{data_format_version}. Pass --data-format-version {found}."
        )
    try:
        input_ids, loss_mask = record["input_ids"], record["loss_mask"]
        if found == 1:
            states = list(record["hidden_states"])
            scales = None
            if "hidden_states_scale" in record:  # fp8 with a scale per row
                scales = list(record["hidden_states_scale"])
                if len(scales) != len(states) or any(q.dtype != FP8 for q in states):
                    raise KeyError("hidden_states_scale")
                if dequantize:
                    states = [dequantize_fp8(q, sc) for q, sc in zip(states, scales)]
                    scales = None
            aux, last = states[:-1], states[-1]
        else:
            scales = None
            fused, last = record["hidden_state"], record["target"]
            aux = list(fused.chunk(fused.shape[-1] // last.shape[-1], dim=-1))
    except (KeyError, TypeError, AttributeError, ZeroDivisionError, RuntimeError) as e:
        raise _fail(path, f"{e.__class__.__name__}: {e}") from None
    sample = Sample(input_ids.long(), aux, last, loss_mask.long())
    if scales is not None:
        sample.aux_scales, sample.last_scale = scales[:-1], scales[-1]
    _check_shapes(path, sample)
    if not mmap:
        for h in [*sample.aux_hidden_states, sample.last_hidden_state, *sample.scales]:
            check_finite(path, h)
    return sample


def _load(path: Path, mmap: bool) -> object:
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # torch's legacy (non-zip) format cannot be mapped; read it whole
            pass
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_shapes(path: Path, s: Sample) -> None:
    length = s.input_ids.shape[0]
    if s.input_ids.ndim != 1 or s.loss_mask.shape != (length,):
        raise _fail(path, "input_ids and loss_mask must be 1-D of the same length")
    for h in [*s.aux_hidden_states, s.last_hidden_state]:
        if h.ndim != 2 or h.shape[0] != length or h.shape[1] != s.last_hidden_state.shape[1]:
            raise _fail(path, f"a hidden state has shape {tuple(h.shape)}, expected [{length}, H]")
    for scale in s.scales:
        if scale.shape != (length,):
            raise _fail(
                path, f"a hidden-state scale has shape {tuple(scale.shape)}, expected [{length}]"
            )


def check_finite(path: Path, hidden: torch.Tensor) -> None:
    """NaN or Inf in a sample's hidden states (`hidden`, or the rows of it a loader copied; fp8
    values or their fp32 scales) is a UserInputError naming the file."""
    if hidden.dtype == FP8:  # e4m3fn has no Inf; NaN is every exponent and mantissa bit set
        bad = bool(((hidden.view(torch.uint8) & 0x7F) == 0x7F).any())
    else:
        bad = not bool(torch.isfinite(hidden).all())
    if bad:
        raise UserInputError(
            f"sample file {path} contains NaN or Inf hidden states; the verifier overflowed "
            "on this sample. Delete the file and pass --allow-missing-samples to train "
            "without it (training skips nothing silently), or regenerate it with "
            "`speculators datagen`."
        )
