"""Sample indexing and packing: every token once, documents whole, positions per document."""

from __future__ import annotations

import torch

from speculators.artifacts.samples import save_sample
from speculators.train.data import PackedRows, index_data
from speculators.train.packing import epoch_rows, pack


def write(path, length, hidden=8, layers=4, seed=0, legacy=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (length,), generator=g)
    states = [torch.randn(length, hidden, generator=g) for _ in range(layers)]
    mask = (torch.arange(length) % 2).long()
    if legacy:  # an old file in torch's pre-zip format, version 0 layout
        record = {
            "input_ids": ids,
            "loss_mask": mask,
            "hidden_state": torch.cat(states[:-1], -1),
            "target": states[-1],
        }
        torch.save(record, path, _use_new_zipfile_serialization=False)
    else:
        save_sample(path, ids, states, mask)
    return ids, states, mask


def test_index_finds_nested_files_and_holds_out_validation(tmp_path):
    for i in range(10):
        (tmp_path / f"part{i % 2}").mkdir(exist_ok=True)
        write(tmp_path / f"part{i % 2}" / f"data_{i}.pt", 5 + i, seed=i)
    index = index_data(tmp_path, 1, 0.2, seed=0)
    assert len(index.files) == 10 and (index.num_aux_layers, index.hidden_size) == (3, 8)
    assert len(index.val) == 2 and sorted(index.train + index.val) == list(range(10))
    assert sorted(index.lengths) == list(range(5, 15))


def test_version_0_files_in_the_legacy_format_are_read(tmp_path):
    write(tmp_path / "data_0.pt", 7, legacy=True)
    write(tmp_path / "data_1.pt", 9, seed=1, legacy=True)
    index = index_data(tmp_path, 0, 0.0, seed=0)
    assert index.lengths == [7, 9] and index.num_aux_layers == 3


def test_packing_keeps_documents_whole_with_their_own_positions(tmp_path):
    truth = [write(tmp_path / f"data_{i}.pt", n, seed=i) for i, n in enumerate([30, 50, 20, 90])]
    index = index_data(tmp_path, 1, 0.0, seed=0)
    rows = pack([0, 1, 2, 3], index.lengths, 100)
    assert rows == [[0, 1, 2], [3]]
    row = PackedRows(index.files, rows, 100, 1)[0]
    assert row["doc_ids"].tolist() == [0] * 30 + [1] * 50 + [2] * 20
    assert row["position_ids"].tolist() == list(range(30)) + list(range(50)) + list(range(20))
    ids, states, mask = truth[1]
    assert torch.equal(row["input_ids"][30:80], ids) and torch.equal(row["loss_mask"][30:80], mask)
    aux = torch.cat(states[:-1], -1).to(torch.bfloat16)
    assert torch.equal(row["aux_hidden_states"][30:80], aux)
    padded = PackedRows(index.files, rows, 100, 1)[1]
    assert padded["doc_ids"].tolist() == [0] * 90 + [-1] * 10
    assert padded["loss_mask"][90:].sum() == 0


def test_epoch_order_is_a_function_of_seed_and_epoch(tmp_path):
    for i in range(8):
        write(tmp_path / f"data_{i}.pt", 10 + i, seed=i)
    index = index_data(tmp_path, 1, 0.0, seed=0)
    assert epoch_rows(index, 40, 0, 1) == epoch_rows(index, 40, 0, 1)
    assert epoch_rows(index, 40, 0, 1) != epoch_rows(index, 40, 0, 2)
    for rows in (epoch_rows(index, 40, 0, e) for e in range(3)):
        assert sorted(i for row in rows for i in row) == list(range(8))


def test_loader_workers_hand_over_the_same_rows(tmp_path):
    """Rows built in worker processes (in shared memory) equal rows built in this process, and
    every field of a padded row's tail is the padding value."""
    from speculators.train.data import make_loader

    for i, n in enumerate([30, 50, 20, 90, 15]):
        write(tmp_path / f"data_{i}.pt", n, seed=i)
    index = index_data(tmp_path, 1, 0.0, seed=0)
    rows = pack(list(range(5)), index.lengths, 100)
    data = PackedRows(index.files, rows, 100, 1, padding={len(rows) - 1})
    local = [data[r] for r in range(len(rows))]
    loaded = list(make_loader(data, 2, False, seed=0))
    assert len(loaded) == len(local)
    for mine, theirs in zip(local, loaded):
        assert set(theirs) == set(mine)
        for k in mine:
            assert theirs[k].shape == (1, *mine[k].shape) and torch.equal(theirs[k][0], mine[k])
        tail = mine["doc_ids"] == -1
        for k in ("input_ids", "loss_mask", "position_ids"):
            assert not mine[k][tail].any()
        assert (
            not mine["aux_hidden_states"][tail].any() and not mine["last_hidden_state"][tail].any()
        )
    assert loaded[-1]["loss_mask"].sum() == 0  # a padding row counts nothing


def test_a_sample_with_nan_is_named_by_the_loader(tmp_path):
    ids, states, mask = write(tmp_path / "data_0.pt", 12)
    states[1][3, 2] = float("nan")
    save_sample(tmp_path / "data_1.pt", ids, states, mask)
    index = index_data(tmp_path, 1, 0.0, seed=0)
    out = PackedRows(index.files, [[0, 1]], 64, 1)[0]
    assert "data_1.pt contains NaN or Inf" in out["error"]


def test_fp8_rows_stay_fp8_and_convert_to_the_stored_values(tmp_path):
    """fp8 files: the loader packs the fp8 bytes and their scales as stored (half the bytes
    through the loader and to the GPU); converted on the device they are fp8 * scale of each
    file, the numbers the host conversion (load_sample) gives."""
    import pytest

    from speculators.artifacts.samples import FP8, dequantize_fp8_rows
    from speculators.errors import UserInputError

    g = torch.Generator().manual_seed(0)
    raw = []
    for i, n in enumerate([30, 50]):
        states = [torch.randn(n, 8, generator=g) * (j + 1) for j in range(4)]
        save_sample(tmp_path / f"data_{i}.pt", torch.arange(n), states, torch.ones(n).long(), "fp8")
        raw.append(torch.load(tmp_path / f"data_{i}.pt", weights_only=True))
    index = index_data(tmp_path, 1, 0.0, seed=0)
    assert index.fp8
    row = PackedRows(index.files, [[0, 1]], 100, 1, fp8=True)[0]
    assert row["aux_hidden_states"].dtype == FP8 and row["aux_scale"].shape == (100, 3)
    aux = dequantize_fp8_rows(row["aux_hidden_states"], row["aux_scale"], torch.bfloat16)
    last = dequantize_fp8_rows(row["last_hidden_state"], row["last_scale"][:, None], torch.float32)
    # independently: each file's fp8 values times its scales, layer by layer
    pairs = [zip(r["hidden_states"], r["hidden_states_scale"]) for r in raw]
    want_CH = torch.cat([torch.cat([q.float() * s[:, None] for q, s in p], -1) for p in pairs])
    assert torch.equal(aux[:80], want_CH[:, :24].to(torch.bfloat16))
    assert torch.equal(last[:80], want_CH[:, 24:])
    assert not aux[80:].any() and not last[80:].any()  # padding
    host = PackedRows(index.files, [[0, 1]], 100, 1)[0]  # converted by load_sample on the host
    assert torch.equal(host["aux_hidden_states"], aux)
    # a NaN stored in fp8 is found by the loader, naming the file
    record = raw[1]
    record["hidden_states"][0].view(torch.uint8)[3, 2] = 0x7F
    torch.save(record, tmp_path / "data_1.pt")
    with pytest.raises(UserInputError, match="data_1.pt"):
        PackedRows(index.files, [[0, 1]], 100, 1, fp8=True)._row(0)
