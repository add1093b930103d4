"""Loss and metrics against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from speculators.train.head_loss import linear_kl
from speculators.train.loss import TTTMetrics, draft_rows_first, verifier_targets

# Draft vocab = target ids [0, 2, 3] of a 5-token verifier vocab.
TARGET_IDS = torch.tensor([0, 2, 3])
D2T = TARGET_IDS - torch.arange(3)


def test_forward_kl_and_accuracy_by_hand():
    p = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])
    q = torch.tensor([[0.25, 0.25, 0.5], [0.25, 0.25, 0.5]])
    # Verifier's full-vocab argmax: id 3 (= draft id 2, the draft's argmax) then id 1, which the
    # draft vocab lacks, so the second is a miss even though the draft can't do better.
    # Identity lm_head: the draft's logits are exactly log q.
    _, kl, correct = linear_kl(
        q.log(), torch.eye(3), p.log(), torch.tensor([3, 1]), torch.ones(2), D2T
    )
    expected = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(1.0) + 0.25 * math.log(0.25 / 0.5)
    assert abs(expected - 0.25 * math.log(2)) < 1e-12
    torch.testing.assert_close(kl, torch.tensor([expected, expected]))
    assert correct.tolist() == [True, False]


def test_verifier_targets_use_final_norm_and_full_vocab_argmax():
    hidden = torch.tensor([[3.0, -3.0]])  # rms 3 -> normalised to [1, -1], then * weight
    norm_w = torch.tensor([2.0, 1.0])  # -> [2, -1]
    lm_head = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.5, 0.0], [1.0, 0.0], [0.0, 5.0]])
    # full logits: [0, 6, 1, 2, -5] -> argmax 1; draft logits (ids 0, 2, 3): [0, 1, 2]
    head, row_ids = draft_rows_first(lm_head, TARGET_IDS)
    assert row_ids.tolist() == [0, 2, 3, 1, 4]
    logp, argmax = verifier_targets(hidden, norm_w, head, 0.0, row_ids, 3)
    assert argmax.tolist() == [1]
    z = math.log(math.exp(0) + math.exp(1) + math.exp(2))
    torch.testing.assert_close(logp, torch.tensor([[0 - z, 1 - z, 2 - z]]))


@pytest.mark.parametrize("draft_ids", [[0, 2, 3], [3, 4], [0, 1, 2, 3, 4]])
def test_full_vocab_argmax_is_plain_argmax_in_vocab_order_ties_included(draft_ids):
    """Reordering the lm_head (draft rows first) must not change which id wins: among equal
    logits the lowest target id, as torch.argmax over the logits in vocab order picks."""
    # Exact arithmetic, so that a tie is a tie whatever order a BLAS kernel sums in: entries
    # +-1 have rms 1 (eps 0: the norm is the identity) and the lm_head holds small integers.
    g = torch.Generator().manual_seed(0)
    lm_head = torch.randint(-3, 4, (5, 4), generator=g).float()
    lm_head[1] = lm_head[3] = lm_head[4] = 2 * lm_head[0]  # rows 1, 3, 4 tie when they win
    hidden = torch.randint(0, 2, (64, 4), generator=g).float() * 2 - 1
    draft = torch.tensor(draft_ids)
    head, row_ids = draft_rows_first(lm_head, draft)
    logp, argmax = verifier_targets(hidden, torch.ones(4), head, 0.0, row_ids, len(draft_ids), 8)
    logits = hidden.double() @ lm_head.double().T
    assert torch.equal(argmax, logits.argmax(-1))
    assert {1, 3, 4} & set(argmax.tolist()) == {1}  # the tie occurred and went to the lowest id
    expected = F.log_softmax(logits[:, draft], -1).float()
    torch.testing.assert_close(logp, expected, rtol=1e-5, atol=1e-5)


def test_acceptance_chain_and_expected_length_by_hand():
    m = TTTMetrics(2)
    scored = torch.tensor([True, True, True, True, False])
    right0 = torch.tensor([True, True, False, True, True])
    right1 = torch.tensor([True, False, True, True, True])
    kl = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])
    m.add_step(0, kl, right0, scored, torch.ones(5, dtype=torch.bool))
    m.add_step(1, kl, right1, scored, right0)
    s = m.summary()
    assert s["loss_0"] == 2.5 and s["acc_0"] == 0.75 and s["acc_1"] == 0.75
    # step 1 given step 0 right: rows 0, 1, 3 -> rows 0, 3 right
    assert s["cond_acc_0"] == 0.75 and abs(s["cond_acc_1"] - 2 / 3) < 1e-12
    assert abs(s["accept_len"] - (1 + 0.75 + 0.75 * 2 / 3)) < 1e-12


def test_metrics_held_on_the_device_add_up_when_merged_and_read():
    a, b = TTTMetrics(1, num_tokens=torch.tensor(5)), TTTMetrics(1, num_tokens=3)
    yes, no = torch.tensor([True, True]), torch.tensor([True, False])
    a.add_step(0, torch.tensor([1.0, 2.0]), yes, yes, yes)
    b.add_step(0, torch.tensor([4.0, 8.0]), no, yes, yes)
    total = TTTMetrics(1)
    total.merge(a)
    total.merge(b)
    t = total.totals()
    assert t["loss_sum"] == [15.0] and t["scored"] == [4.0] and t["correct"] == [3.0]
    assert total.num_tokens == 8
    assert a.totals()["loss_sum"] == [3.0] and a.num_tokens == 5  # merging does not move them


def test_loss_only_steps_count_for_the_loss_not_for_accuracy():
    """Training measures accuracy on every --metrics-every-th step only: a loss-only step adds
    to the loss, and accuracy and acceptance are over the measured steps alone."""
    m = TTTMetrics(1)
    yes = torch.tensor([True, True, True, True])
    m.add_step(0, torch.tensor([1.0, 1.0, 1.0, 1.0]), None, yes, yes)  # loss-only
    assert not m.has_accuracy and set(m.summary()) == {"loss_0"}
    m.add_step(0, torch.tensor([3.0, 3.0]), torch.tensor([True, False]), yes[:2], yes[:2])
    s = m.summary()
    assert s["loss_0"] == (4 * 1.0 + 2 * 3.0) / 6  # every scored position of both steps
    assert s["acc_0"] == 0.5 and s["accept_len"] == 1.5  # the measured step alone


def test_loss_only_targets_are_the_same_log_probs_without_the_argmax():
    g = torch.Generator().manual_seed(1)
    lm_head, hidden = torch.randn(9, 4, generator=g), torch.randn(30, 4, generator=g)
    head, row_ids = draft_rows_first(lm_head, torch.tensor([1, 4, 6]))
    full, argmax = verifier_targets(hidden, torch.ones(4), head, 1e-6, row_ids, 3, 8, pad=2)
    cheap, none = verifier_targets(
        hidden, torch.ones(4), head, 1e-6, row_ids, 3, 8, pad=2, argmax=None
    )
    assert none is None and argmax is not None and argmax.shape == (32,)
    torch.testing.assert_close(cheap, full)
    # the draft-vocab argmax (speculators 0.9.0's accuracy) from the draft rows alone
    _, draft = verifier_targets(hidden, torch.ones(4), head, 1e-6, row_ids, 3, 8, argmax="draft")
    logits = F.normalize(hidden, dim=-1) * 2 @ lm_head[[1, 4, 6]].T
    assert draft is not None and torch.equal(draft, torch.tensor([1, 4, 6])[logits.argmax(-1)])
