"""`Trainer.train` keeps one step in flight (step i read once step i+1 is queued): every step's
numbers still reach `on_step` under its own step number, the same as stepping one at a time."""

from __future__ import annotations

import copy

import pytest
import torch
from random_draft import build

from speculators.train.trainer import Trainer, TrainerOptions


def trainer(model, targets, tmp_path) -> Trainer:
    options = TrainerOptions(
        epochs=1, lr=1e-2, weight_decay=0.0, max_grad_norm=1.0, ttt_steps=3,
        ttt_step_loss_decay=0.8, total_steps=4, warmup_steps=1, lr_decay="linear",
        attention="dense", seed=0,
    )  # fmt: skip
    return Trainer(model, targets, options, torch.device("cpu"), tmp_path, {})


def test_steps_in_flight_report_what_steps_one_at_a_time_do(tmp_path):
    model, targets, batch = build("cpu", 1)
    batches = [{k: v.roll(13 * i, dims=1) for k, v in batch.items()} for i in range(4)]
    one_at_a_time = trainer(copy.deepcopy(model), targets, tmp_path / "a")
    expected = [one_at_a_time.train_step(b) for b in batches]

    in_flight = trainer(model, targets, tmp_path / "b")
    seen: list[tuple[int, dict[str, float]]] = []
    in_flight.on_step = lambda step, metrics: seen.append((step, metrics))
    in_flight.save = lambda epoch, summary: tmp_path  # type: ignore[method-assign]  # no files
    in_flight.train(lambda epoch: iter(batches), lambda: None)

    assert [step for step, _ in seen] == [1, 2, 3, 4]
    for (_, got), want in zip(seen, expected):
        for key in ("train/loss", "train/grad_norm", "train/lr", "train/loss_2", "train/acc_0"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), key
        assert got["train/step_s"] > 0 and got["train/data_wait_s"] >= 0
    assert len({m["train/lr"] for _, m in seen}) == 4  # each step's own learning rate
    for a, b in zip(one_at_a_time.model.parameters(), in_flight.model.parameters()):
        torch.testing.assert_close(a, b)


def test_a_diverged_step_is_named_by_its_own_number_though_the_next_is_queued(tmp_path):
    from speculators.errors import UserInputError

    model, targets, batch = build("cpu", 1)
    batches = [dict(batch) for _ in range(4)]
    batches[2]["aux_hidden_states"] = torch.full_like(batch["aux_hidden_states"], float("nan"))
    run = trainer(model, targets, tmp_path)
    run.save = lambda epoch, summary: tmp_path  # type: ignore[method-assign]
    with pytest.raises(UserInputError, match=r"diverged in epoch 0 \(step 3\): the loss is nan"):
        run.train(lambda epoch: iter(batches), lambda: None)
    assert run.global_step == 4  # step 4 had been queued when step 3 was read
