"""Training-time test on a packed batch against a plain, sequential simulation of decoding.

Independent pieces: the verifier's targets come from the Hugging Face model's own logits, and
the draft's predictions from the draft's incremental-decoding path, one document at a time.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from speculators.artifacts.vocab_mapping import load_vocab_mapping
from speculators.config import TrainConfig
from speculators.models.eagle3 import DecodeCache
from speculators.models.verifier import load_verifier_config
from speculators.train.build import build_model
from speculators.train.data import PackedRows, collate, index_data
from speculators.train.step import ttt_forward


@pytest.fixture(scope="module")
def setup(tiny_llama, train_data, tiny_vocab):
    config = TrainConfig(
        verifier_name_or_path=str(tiny_llama),
        data_path=train_data,
        d2t_path=tiny_vocab[0],
        t2d_path=tiny_vocab[1],
    )
    verifier = load_verifier_config(str(tiny_llama), "--verifier-name-or-path")
    d2t, t2d = load_vocab_mapping(config.d2t_path, config.t2d_path)
    model, targets = build_model(config, verifier, d2t, t2d, num_aux=3)
    torch.manual_seed(3)
    for p in model.parameters():  # a trained-looking draft, not the near-zero init
        if p.requires_grad:
            p.data.normal_(0, 0.2)
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    index = index_data(train_data, 1, 0.0, 0)
    return model.eval(), targets, hf, index


def simulated_losses(model, hf, files, steps):
    """Per step: (sum of KL, number scored) from decoding each document on its own."""
    target_ids = torch.nonzero(model.t2d).flatten()
    sums, counts = [0.0] * steps, [0] * steps
    for path in files:
        record = torch.load(path, weights_only=True)
        ids, mask = record["input_ids"], record["loss_mask"]
        n = len(ids)
        with torch.no_grad():
            logp = F.log_softmax(hf(ids[None]).logits[0][:, target_ids], -1)
            fused = model.fuse(torch.cat(record["hidden_states"][:-1], -1).float())
        for i in range(n - 2):
            cache = DecodeCache()
            # step 0 for rows 0..i: token j+1, verifier features of j, position j
            with torch.no_grad():
                logits, hidden = model.step(
                    ids[None, 1 : i + 2], fused[None, : i + 1], torch.arange(i + 1)[None], cache
                )
                logits, hidden = logits[:, -1:], hidden[:, -1:]
                for s in range(steps):
                    if i + 2 + s >= n:  # the predicted token lies past the document's end
                        break
                    if s:
                        tok = ids[None, i + 1 + s : i + 2 + s]
                        logits, hidden = model.step(tok, hidden, torch.tensor([[i + s]]), cache)
                    if mask[i + 2 + s]:
                        p = logp[i + 1 + s]
                        q = F.log_softmax(logits[0, 0], -1)
                        sums[s] += float((p.exp() * (p - q)).sum())
                        counts[s] += 1
    return sums, counts


def test_ttt_steps_equal_sequential_decoding_of_each_packed_document(setup):
    model, targets, hf, index = setup
    rows = [[0, 1, 2]]
    batch = collate([PackedRows(index.files, rows, 128, 1)[0]])
    assert (batch["doc_ids"] >= 0).sum() == sum(index.lengths[:3])
    steps = 3
    with torch.no_grad():
        batch["aux_hidden_states"] = batch["aux_hidden_states"].float()
        batch["last_hidden_state"] = batch["last_hidden_state"].float()
        loss, metrics = ttt_forward(model, batch, targets, steps, 0.5)
    sums, counts = simulated_losses(model, hf, index.files[:3], steps)
    totals = metrics.totals()
    assert totals["scored"] == counts
    for s in range(steps):
        assert totals["loss_sum"][s] == pytest.approx(sums[s], rel=2e-3, abs=1e-4)
    expected = sum(0.5**s * sums[s] / counts[s] for s in range(steps))
    assert float(loss) == pytest.approx(expected, rel=2e-3)


def test_rows_of_a_batch_are_independent(setup):
    """Targets are shifted over the flattened batch: nothing may leak across rows."""
    model, targets, _, index = setup
    rows = PackedRows(index.files, [[0, 1], [2]], 128, 1)
    per_row, steps = [], 3

    def run(batch):
        for key in ("aux_hidden_states", "last_hidden_state"):
            batch[key] = batch[key].float()
        with torch.no_grad():
            return ttt_forward(model, batch, targets, steps, 1.0)[1].totals()

    both = run(collate([rows[0], rows[1]]))
    per_row = [run(collate([rows[i]])) for i in range(2)]
    for name, values in both.items():
        expected = [a + b for a, b in zip(per_row[0][name], per_row[1][name])]
        assert values == pytest.approx(expected, rel=1e-5), name
    assert both["scored"][0] > 0


@pytest.mark.parametrize("num_layers", [1, 2])
def test_shifted_token_projections_give_what_recomputing_them_gives(monkeypatch, num_layers):
    """TTT computes the first layer's token projections at step 0 and reads them shifted by s
    rows at step s. Recomputed from each step's own (masked) tokens, as decoding does, the
    loss, metrics and every gradient are the same, on two rows of two documents and padding."""
    from random_draft import build, loss_and_grads

    from speculators.train import step as step_module
    from speculators.train.attention import TTTAttention

    model, targets, one = build("cpu", num_layers)
    other_doc = torch.tensor([[0] * 70 + [1] * 55 + [-1] * 3])
    other_pos = torch.cat([torch.arange(70), torch.arange(55), torch.zeros(3, dtype=torch.long)])
    batch = {k: torch.cat([v, v.roll(17, dims=1)]) for k, v in one.items()}
    batch["doc_ids"][1], batch["position_ids"][1] = other_doc[0], other_pos
    shifted = loss_and_grads(model, targets, batch, compiled=False)

    class Recomputed(TTTAttention):
        def token_qkv(self, layer_idx, compute):
            return compute()

    monkeypatch.setattr(step_module, "TTTAttention", Recomputed)
    recomputed = loss_and_grads(model, targets, batch, compiled=False)
    torch.testing.assert_close(shifted[0], recomputed[0])
    for name, values in recomputed[1].items():
        assert shifted[1][name] == pytest.approx(values, rel=1e-5), name
    assert recomputed[2].keys() == shifted[2].keys()
    assert "layers.0.self_attn.q_proj.weight" in shifted[2]
    for name, grad in recomputed[2].items():
        torch.testing.assert_close(shifted[2][name], grad, rtol=1e-5, atol=1e-6, msg=name)
