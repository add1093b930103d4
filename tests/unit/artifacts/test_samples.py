"""Sample files: version 1 written as SPEC §2 says, version 0 read, bad files named."""

from __future__ import annotations

import pytest
import torch

from speculators.artifacts.sample_files import first_missing_index, list_sample_files, sample_path
from speculators.artifacts.samples import load_sample, save_sample
from speculators.errors import UserInputError


def test_v1_file_layout(tmp_path):
    ids = torch.arange(5)
    big = torch.randn(3, 10, 4)  # a batch tensor: the file must hold only its own rows
    states = [big[0, :5], big[1, :5], big[2, :5]]
    mask = torch.tensor([0, 0, 1, 1, 0])
    save_sample(sample_path(tmp_path, 7), ids, states, mask)

    raw = torch.load(tmp_path / "data_7.pt", weights_only=True)
    assert set(raw) == {"input_ids", "hidden_states", "loss_mask"}
    assert raw["input_ids"].dtype == torch.long and raw["loss_mask"].dtype == torch.long
    assert [h.dtype for h in raw["hidden_states"]] == [torch.bfloat16] * 3
    assert all(h.untyped_storage().nbytes() == 5 * 4 * 2 for h in raw["hidden_states"])
    s = load_sample(tmp_path / "data_7.pt")
    assert len(s.aux_hidden_states) == 2
    assert torch.equal(s.last_hidden_state, states[2].to(torch.bfloat16))
    assert not list(tmp_path.glob(".tmp-*"))


def test_v0_file_is_split_into_aux_layers(tmp_path):
    aux = [torch.randn(4, 3) for _ in range(3)]
    target = torch.randn(4, 3)
    path = tmp_path / "data_0.pt"
    torch.save(
        {
            "input_ids": torch.arange(4),
            "loss_mask": torch.ones(4, dtype=torch.long),
            "hidden_state": torch.cat(aux, dim=-1),
            "target": target,
        },
        path,
    )
    s = load_sample(path, data_format_version=0)
    assert all(torch.equal(a, b) for a, b in zip(s.aux_hidden_states, aux, strict=True))
    assert torch.equal(s.last_hidden_state, target)
    with pytest.raises(UserInputError, match="--data-format-version 0"):
        load_sample(path, data_format_version=1)


def test_corrupt_and_nonfinite_files_are_named(tmp_path):
    bad = tmp_path / "data_1.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(UserInputError, match="data_1.pt"):
        load_sample(bad)
    nan = tmp_path / "data_2.pt"
    h = torch.zeros(2, 3)
    h[1, 1] = float("nan")
    save_sample(nan, torch.arange(2), [h, torch.zeros(2, 3)], torch.ones(2, dtype=torch.long))
    with pytest.raises(UserInputError, match="NaN or Inf"):
        load_sample(nan)


def test_listing_and_resume_point(tmp_path):
    for i in (0, 1, 2, 10):
        sample_path(tmp_path, i).write_bytes(b"x")
    (tmp_path / "token_freq.pt").write_bytes(b"x")
    (tmp_path / ".tmp-data_3.pt.abc").write_bytes(b"x")
    names = [p.name for p in list_sample_files(tmp_path)]
    assert names == ["data_0.pt", "data_1.pt", "data_2.pt", "data_10.pt"]
    assert first_missing_index(tmp_path, 11) == 3


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path):
    import os

    save_sample(tmp_path / "data_0.pt", torch.arange(2), [torch.zeros(2, 3)] * 2, torch.ones(2))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "data_0.pt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_fp8_samples_round_trip_within_e4m3_precision_in_half_the_bytes(tmp_path):
    """Each row keeps e4m3's relative precision (3 mantissa bits: rounding error at most 2^-4
    of the value) whatever its range, outlier channels and all-zero rows included; values far
    below the row's largest fall into e4m3's subnormals (error at most 2^-10 of the scale)."""
    from speculators.artifacts.samples import FP8_MAX

    g = torch.Generator().manual_seed(0)
    n, h = 300, 512
    states = [torch.randn(n, h, generator=g) * 3 for _ in range(4)]
    states[0][:, 5] *= 300  # an outlier channel
    states[1][7] = 0  # an all-zero row
    states[2][:, :8] *= 1e-4  # values far below the row's largest
    ids, mask = torch.arange(n), torch.ones(n, dtype=torch.long)
    save_sample(tmp_path / "data_0.pt", ids, states, mask)
    save_sample(tmp_path / "data_1.pt", ids, states, mask, hidden_dtype="fp8")
    got = load_sample(tmp_path / "data_1.pt")
    for x, d in zip(states, [*got.aux_hidden_states, got.last_hidden_state]):
        assert d.dtype == torch.bfloat16 and d.shape == x.shape
        scale = (x.abs().amax(-1, keepdim=True) / FP8_MAX).clamp(min=1e-30)
        bound = torch.maximum(2**-4 * x.abs(), 2**-10 * scale) + 2**-8 * x.abs()  # + bf16
        assert ((d.float() - x).abs() <= bound * 1.0001).all()
    assert not got.last_hidden_state.isnan().any() and (got.aux_hidden_states[1][7] == 0).all()
    bf16, fp8 = (tmp_path / "data_0.pt").stat().st_size, (tmp_path / "data_1.pt").stat().st_size
    assert fp8 < 0.52 * bf16  # fp8 states plus one fp32 scale per row (H = 512)


def test_fp8_sample_with_missing_scales_is_named(tmp_path):
    save_sample(tmp_path / "data_0.pt", torch.arange(4), [torch.ones(4, 8)] * 2, torch.ones(4))
    record = torch.load(tmp_path / "data_0.pt")
    record["hidden_states_scale"] = [torch.ones(4)]  # one scale list for two layers
    torch.save(record, tmp_path / "data_0.pt")
    with pytest.raises(UserInputError, match="data_0.pt is corrupt"):
        load_sample(tmp_path / "data_0.pt")
