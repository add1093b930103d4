"""On a GPU: the whole training path (bf16 autocast, compiled flex attention, fused AdamW,
checkpoints, resume) runs, learns, and matches the dense-mask path."""

from __future__ import annotations

import pytest
import torch

from speculators.config import TrainConfig
from speculators.models.eagle3 import Eagle3Draft
from speculators.train.run import prepare, run_train
from speculators.train.step import ttt_forward

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import build_tiny_llama, make_training_data, write_vocab_files

    root = tmp_path_factory.mktemp("gpu")
    # hidden 64 / 4 heads: head_dim 16, the smallest compiled flex attention takes
    verifier = build_tiny_llama(root / "v", hidden_size=64)
    data = make_training_data(verifier, root / "data")
    d2t, t2d = write_vocab_files(root / "vocab", _vocab(verifier), 300)
    return verifier, data, d2t, t2d, root


def _vocab(verifier) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(verifier).vocab_size


def config(setup, **kw) -> TrainConfig:
    verifier, data, d2t, t2d, root = setup
    values = dict(
        verifier_name_or_path=str(verifier), data_path=data, d2t_path=d2t, t2d_path=t2d,
        save_path=root / "ck", epochs=3, lr=3e-3, total_seq_len=128, device="cuda",
    )  # fmt: skip
    return TrainConfig(**(values | kw))


def test_flex_and_dense_losses_agree_on_gpu(setup):
    losses = {}
    for impl in ("dense", "flex"):
        run = prepare(config(setup, attention=impl))
        trainer = run.trainer
        batch = trainer._to_device(next(iter(run.train_batches(0))))
        with torch.no_grad(), trainer._autocast():
            loss, _ = ttt_forward(trainer.model, batch, trainer.targets, 3, 1.0, impl)
        losses[impl] = float(loss)
    assert losses["flex"] == pytest.approx(losses["dense"], rel=2e-2)


def test_train_and_resume_on_gpu(setup):
    first = run_train(config(setup, epochs=2))
    assert first.history[-1]["train/loss_0"] < first.history[0]["train/loss_0"]
    resumed = run_train(config(setup, epochs=3))
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "1"
    model = Eagle3Draft.from_checkpoint(resumed.checkpoint)
    assert all(torch.isfinite(p).all() for p in model.parameters())
