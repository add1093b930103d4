"""token_freq.pt keeps the reference format (a plain dict[int, int] for torch.load) and carries
the record of what it was counted over inside the file; older files are still read."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from speculators.artifacts.token_freq import (
    TokenFreqMeta,
    load_token_freq,
    load_token_freq_meta,
    meta_path,
    save_token_freq,
)
from speculators.errors import UserInputError

COUNTS = {5: 3, 0: 10, 7: 3, 9: 1}
META = TokenFreqMeta(
    fingerprint="f" * 32,
    target_model_path="./model",
    train_data_path="sharegpt",
    vocab_size=12,
    num_samples=4,
    num_tokens=17,
    tokenizer="t" * 32,
)


def test_readers_of_the_reference_format_see_exactly_the_counts(tmp_path):
    path = tmp_path / "token_freq.pt"
    save_token_freq(path, COUNTS, META)
    for kwargs in ({"weights_only": True}, {"weights_only": True, "mmap": True}, {}):
        loaded = torch.load(path, **kwargs)
        assert type(loaded) is dict and loaded == COUNTS
    # What the reference build_vocab_mapping does with it: sort (id, count) pairs.
    assert sorted(torch.load(path).items(), key=lambda x: (-x[1], x[0]))[0] == (0, 10)
    assert load_token_freq(path) == COUNTS


def test_the_record_travels_with_the_file(tmp_path):
    path = tmp_path / "token_freq.pt"
    save_token_freq(path, COUNTS, META)
    assert not meta_path(path).exists()  # no sidecar to lose
    copied = tmp_path / "elsewhere" / "counts.pt"
    copied.parent.mkdir()
    shutil.copy(path, copied)
    assert load_token_freq_meta(copied) == META


def test_older_files_read_their_sidecar_or_have_no_record(tmp_path):
    path = tmp_path / "token_freq.pt"
    torch.save(COUNTS, path)  # the reference tools, or this tool before the record moved
    assert load_token_freq_meta(path) is None
    sidecar = META.model_dump(exclude={"tokenizer"})
    meta_path(path).write_text(json.dumps(sidecar))
    assert load_token_freq_meta(path) == TokenFreqMeta(**sidecar)
    meta_path(path).write_text("{broken")
    with pytest.raises(UserInputError, match="token_freq.pt.meta.json.*damaged"):
        load_token_freq_meta(path)


def test_saving_removes_a_sidecar_that_described_the_replaced_file(tmp_path):
    path = tmp_path / "token_freq.pt"
    meta_path(path).write_text(json.dumps(META.model_dump()))
    save_token_freq(path, COUNTS, META)
    assert not meta_path(path).exists()


@pytest.mark.parametrize("counts", [{}, {3: 0, 4: 0}])
def test_counts_of_nothing_are_refused(tmp_path, counts):
    path = tmp_path / "token_freq.pt"
    torch.save(counts, path)
    with pytest.raises(UserInputError, match="token_freq.pt counts no tokens"):
        load_token_freq(path)
