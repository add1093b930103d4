"""The compiled draft computes what the eager one does, with the same parameter names."""

from __future__ import annotations

import pytest
import torch
from random_draft import build, loss_and_grads, rel_err

from speculators.train.compiled import compile_draft


@pytest.mark.parametrize("num_layers", [1, 2])
def test_compiled_pieces_trace_whole_and_match_eager(num_layers):
    """On CPU with the aot_eager backend: dynamo traces the layer pieces (a graph break would
    still match, so fullgraph errors are asked for) and the numbers and names stay the same."""
    model, targets, batch = build("cpu", num_layers)
    names = list(model.state_dict())
    want = loss_and_grads(model, targets, batch, compiled=False)
    torch._dynamo.reset()
    for layer in model.layers:
        pieces = ("token_qkv",) if layer.fused_input else ()
        for name in (*pieces, "before_attention", "after_attention"):
            fn = getattr(layer, name)
            setattr(layer, name, torch.compile(fn, backend="aot_eager", fullgraph=True))
    got = loss_and_grads(model, targets, batch, compiled=False)
    compile_draft(model, backend="aot_eager")  # the production entry point, on top
    again = loss_and_grads(model, targets, batch, compiled=False)
    assert list(model.state_dict()) == names
    for result in (got, again):
        torch.testing.assert_close(result[0], want[0])
        assert result[1] == want[1]
        assert result[2].keys() == want[2].keys()
        for k in want[2]:
            torch.testing.assert_close(result[2][k], want[2][k], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_inductor_compiled_step_is_as_close_to_fp32_as_eager_bf16():
    """bf16 rounds differently when fused, so the yardstick is the fp32 dense-mask step: the
    compiled bf16 step (layers, loss, targets) may be no further from it than the eager bf16
    step is (a wrong gradient would be off by tens of percent)."""
    model, targets, batch = build("cuda", 1)
    reference = loss_and_grads(model, targets, batch, compiled=False, impl="dense")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = loss_and_grads(model, targets, batch, compiled=False, impl="flex")
        compile_draft(model)
        compiled = loss_and_grads(model, targets, batch, compiled=True, impl="flex")
    for name in ["loss", *reference[2]]:
        pick = (lambda r: r[0]) if name == "loss" else (lambda r, n=name: r[2][n])
        e_eager, e_compiled = (
            rel_err(pick(eager), pick(reference)),
            rel_err(pick(compiled), pick(reference)),
        )
        assert e_compiled <= max(2 * e_eager, 2e-2), (name, e_eager, e_compiled)
    assert compiled[1]["scored"] == reference[1]["scored"]


@pytest.mark.parametrize(
    ("device", "no_compile", "expected"),
    [("cuda", False, True), ("cuda", True, False), ("cpu", False, False)],
)
def test_compiling_is_the_gpu_default_and_no_compile_turns_it_off(device, no_compile, expected):
    from speculators.config import TrainConfig
    from speculators.train.run import trainer_options

    config = TrainConfig(verifier_name_or_path="v", no_compile=no_compile)
    assert trainer_options(config, torch.device(device), 10, 64).compile is expected


def test_a_failing_compile_stops_training_with_a_message_naming_no_compile(monkeypatch):
    from pathlib import Path

    from speculators.errors import UserInputError
    from speculators.train import trainer as trainer_module
    from speculators.train.trainer import Trainer, TrainerOptions

    def broken(gm, example_inputs):
        raise RuntimeError("no C compiler")

    from speculators.train import head_loss, loss

    # The loss and target chunks compile with aot_eager (inductor on CPUs needs a C compiler).
    eager_compile = lambda fn: torch.compile(fn, backend="aot_eager")  # noqa: E731
    monkeypatch.setattr(loss, "_compiled_target_chunk", lambda: eager_compile(loss._target_chunk))
    monkeypatch.setattr(
        head_loss, "_compiled_chunk_stats", lambda: eager_compile(head_loss._chunk_stats)
    )
    monkeypatch.setattr(trainer_module, "compile_draft", lambda m: compile_draft(m, broken))
    model, targets, batch = build("cpu", 1)
    options = TrainerOptions(
        epochs=1, lr=1e-3, weight_decay=0.0, max_grad_norm=1.0, ttt_steps=3,
        ttt_step_loss_decay=0.8, total_steps=10, warmup_steps=1, lr_decay="constant",
        attention="dense", seed=0, compile=True,
    )  # fmt: skip
    trainer = Trainer(model, targets, options, torch.device("cpu"), Path("/unused"), {})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(UserInputError, match="--no-compile") as info:
        trainer.train_step({k: v.cpu() for k, v in batch.items()})
    assert "no C compiler" in str(info.value) and "the draft" in str(info.value)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
