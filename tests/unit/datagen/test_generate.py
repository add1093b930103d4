"""The generation loop: the pipelined path writes exactly what one-by-one Hugging Face forward
passes give, reusing its host buffers safely, and an error mid-run leaves only complete files."""

from __future__ import annotations

import io

import pytest
import torch

from speculators.artifacts.samples import load_sample
from speculators.datagen.backends.transformers import TransformersBackend
from speculators.datagen.generate import generate_samples
from speculators.datagen.writer import SampleWriter
from speculators.errors import UserInputError

LAYER_IDS = [0, 2, 4]  # of 6: every one is HF's hidden_states[i + 1] (the last is post-norm)
LENGTHS = [17, 40, 3, 40, 29, 8, 8, 33, 1, 12]


class Rows:
    """The tokenized-data interface the loop reads."""

    def __init__(self, rows):
        self.rows = rows
        self.num_samples = len(rows)

    def sample(self, idx):
        return self.rows[idx]

    def lengths(self):
        return [len(ids) for ids, _ in self.rows]


@pytest.fixture(scope="module")
def setup(tiny_llama):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(3)
    rows = []
    for n in LENGTHS:
        ids = torch.randint(0, 300, (n,), generator=g).tolist()
        rows.append((ids, torch.randint(0, 2, (n,), generator=g).tolist()))
    reference = {}
    with torch.no_grad():
        for idx, (ids, mask) in enumerate(rows):
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            record = {
                "input_ids": torch.tensor(ids),
                "hidden_states": [hs[i + 1][0].to(torch.bfloat16) for i in LAYER_IDS],
                "loss_mask": torch.tensor(mask),
            }
            buffer = io.BytesIO()
            torch.save(record, buffer)
            reference[idx] = (record, buffer.getvalue())
    return model, Rows(rows), reference


def backend(model):
    return TransformersBackend(model, LAYER_IDS, torch.device("cpu"))


def run(model, data, out, batch_size, todo=None, **kw):
    # One pending batch at most: the host buffers are reused for every batch.
    writer = SampleWriter(max_batches=1, num_threads=3)
    todo = list(range(data.num_samples)) if todo is None else todo
    b = backend(model)
    try:
        return generate_samples(b, data, todo, out, batch_size, writer=writer, **kw)
    finally:
        b.close()


def files(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("data_*.pt")) if p.is_file()}


def test_pipelined_one_by_one_writes_exactly_the_reference_bytes(setup, tmp_path):
    model, data, reference = setup
    stats = run(model, data, tmp_path, batch_size=1)
    assert files(tmp_path) == {f"data_{i}.pt": ref for i, (_, ref) in reference.items()}
    assert stats.num_tokens == stats.num_padded_tokens == sum(LENGTHS)
    assert stats.bytes_written == sum(len(ref) for _, ref in reference.values())
    assert not list(tmp_path.glob(".tmp-*"))


def test_pipelined_batches_equal_the_synchronous_path_and_the_reference(setup, tmp_path):
    model, data, reference = setup
    stats = run(model, data, tmp_path / "pipelined", batch_size=3)
    run(model, data, tmp_path / "sync", batch_size=3, pipelined=False)
    pipelined = files(tmp_path / "pipelined")
    assert pipelined == files(tmp_path / "sync") and len(pipelined) == len(LENGTHS)
    assert stats.num_padded_tokens > stats.num_tokens  # batches of unequal lengths
    for idx, (record, _) in reference.items():
        got = torch.load(tmp_path / "pipelined" / f"data_{idx}.pt")
        assert torch.equal(got["input_ids"], record["input_ids"])
        assert torch.equal(got["loss_mask"], record["loss_mask"])
        for a, b in zip(got["hidden_states"], record["hidden_states"], strict=True):
            # Each tensor holds just its sample's rows, and padding changes only rounding.
            assert a.untyped_storage().nbytes() == b.numel() * 2
            torch.testing.assert_close(a.float(), b.float(), atol=1e-6, rtol=1e-2)


class FailingBackend(TransformersBackend):
    """Raises `error` on the `fail_at`-th launch."""

    def __init__(self, model, fail_at, error):
        super().__init__(model, LAYER_IDS, torch.device("cpu"))
        self.calls, self.fail_at, self.error = 0, fail_at, error

    def launch(self, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error
        return super().launch(batch)


def assert_only_complete_files(out, reference):
    assert not list(out.glob(".tmp-*"))
    for name in files(out):
        record = reference[int(name[5:-3])][0]
        got = load_sample(out / name)
        assert torch.equal(got.input_ids, record["input_ids"]), name
        for a, b in zip([*got.aux_hidden_states, got.last_hidden_state], record["hidden_states"]):
            torch.testing.assert_close(a.float(), b.float(), atol=1e-6, rtol=1e-2)


@pytest.mark.parametrize(
    ("error", "expected", "message"),
    [
        (RuntimeError("device fell over"), RuntimeError, "device fell over"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), UserInputError, "--batch-size 2"),
    ],
)
def test_capture_error_mid_run_keeps_complete_files(setup, tmp_path, error, expected, message):
    model, data, reference = setup
    b = FailingBackend(model, 3, error)
    with pytest.raises(expected, match=message):
        generate_samples(b, data, list(range(data.num_samples)), tmp_path, 2)
    b.close()
    assert len(files(tmp_path)) == 2  # the first batch; the one in flight is recomputed later
    assert_only_complete_files(tmp_path, reference)


def test_write_error_mid_run_names_the_file_and_a_rerun_completes(setup, tmp_path):
    model, data, reference = setup
    (tmp_path / "data_7.pt").mkdir()  # the rename onto it fails
    with pytest.raises(UserInputError, match=r"--output-dir .*data_7\.pt.*rerun") as e:
        run(model, data, tmp_path, batch_size=2)
    assert isinstance(e.value.__cause__, OSError)
    assert_only_complete_files(tmp_path, reference)
    (tmp_path / "data_7.pt").rmdir()
    todo = [i for i in range(data.num_samples) if not (tmp_path / f"data_{i}.pt").exists()]
    assert todo
    run(model, data, tmp_path, batch_size=2, todo=todo)
    assert len(files(tmp_path)) == len(LENGTHS)
    assert_only_complete_files(tmp_path, reference)
