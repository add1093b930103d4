"""Speculative decoding against hand-computed acceptance numbers, the lossless property at
temperature 0, and the unbiasedness of rejection sampling at temperature > 0."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from draft_checkpoints import make_draft_checkpoint

from speculators.evaluate.decode import (
    DecodeStats,
    as_generator,
    speculative_generate,
    verify_round,
)
from speculators.evaluate.models import EagleProposer, HFVerifier


@pytest.fixture(scope="module")
def tiny_draft(tiny_llama: Path, tmp_path_factory) -> Path:
    return make_draft_checkpoint(tiny_llama, tmp_path_factory.mktemp("tiny-draft") / "0")


PROMPTS = [[5, 17, 42, 8, 99, 3], [200, 201, 7], [12] * 9]


@pytest.fixture(scope="module")
def verifier_model(tiny_llama: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


def greedy_reference(model, prompt: list[int], num_tokens: int) -> list[int]:
    """Greedy continuation by full forward passes without any cache (independent of eval)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(num_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


class ScriptedProposer:
    """Proposes the verifier's true greedy continuation, wrong from draft position
    `agree(round)` on (a wrong token is the right one + 1), so acceptance is known in advance."""

    def __init__(self, full: list[int], agree, vocab: int, hidden: int, num_aux: int) -> None:
        self.full, self.agree, self.vocab = full, agree, vocab
        self.width = hidden * num_aux
        self.round = 0

    def start(self) -> None:
        self.round = 0

    def propose(self, next_tokens, aux_hidden, first_row, num_tokens, temperature, generator):
        assert aux_hidden.shape == (len(next_tokens), self.width)
        final = first_row + len(next_tokens) + 1  # tokens x_0..x_{m-1} are final
        assert next_tokens.tolist() == self.full[first_row + 1 : final]
        right = self.full[final : final + num_tokens]
        k = self.agree(self.round)
        self.round += 1
        return [t if i < k else (t + 1) % self.vocab for i, t in enumerate(right)], None


def run_scripted(model, prompt, agree, max_new, k):
    full = prompt + greedy_reference(model, prompt, max_new + k + 1)
    cfg = model.config
    verifier = HFVerifier(model, [1, 3, 4])
    proposer = ScriptedProposer(full, agree, cfg.vocab_size, cfg.hidden_size, 3)
    stats = DecodeStats(k)
    out = speculative_generate(
        verifier, proposer, prompt, max_new, k, 0.0, set(), as_generator(0), stats
    )
    verifier.close()
    return out, full[len(prompt) : len(prompt) + max_new], stats


def test_draft_that_always_agrees(verifier_model):
    out, ref, s = run_scripted(verifier_model, PROMPTS[0], lambda r: 3, max_new=10, k=3)
    assert out == ref
    # 1 token from the prefill, then rounds of 3 accepted + 1 bonus: 3 rounds (13 -> cut to 10).
    assert (s.num_drafts, s.num_accepted_tokens, s.num_draft_tokens) == (3, 9, 9)
    assert s.num_verifier_passes == 4 and s.num_generated_tokens == 10
    assert s.mean_acceptance_length == pytest.approx(4.0)
    assert s.per_position_acceptance_rate == [1.0, 1.0, 1.0]
    assert s.draft_acceptance_rate == 1.0
    assert s.verifier_passes_per_token == pytest.approx(0.4)


def test_draft_that_never_agrees(verifier_model):
    out, ref, s = run_scripted(verifier_model, PROMPTS[1], lambda r: 0, max_new=10, k=3)
    assert out == ref
    assert (s.num_drafts, s.num_accepted_tokens, s.num_draft_tokens) == (9, 0, 27)
    assert s.num_verifier_passes == 10
    assert s.mean_acceptance_length == 1.0
    assert s.per_position_acceptance_rate == [0.0, 0.0, 0.0]
    assert s.verifier_passes_per_token == 1.0


def test_draft_that_agrees_on_its_first_token_only(verifier_model):
    out, ref, s = run_scripted(verifier_model, PROMPTS[2], lambda r: 1, max_new=9, k=3)
    assert out == ref
    # 1 + 4 rounds x (1 accepted + 1 correction) = 9 tokens in 5 passes.
    assert (s.num_drafts, s.num_accepted_tokens) == (4, 4)
    assert s.mean_acceptance_length == pytest.approx(2.0)
    assert s.per_position_acceptance_rate == [1.0, 0.0, 0.0]
    assert s.draft_acceptance_rate == pytest.approx(4 / 12)
    assert s.num_verifier_passes == 5


@pytest.mark.parametrize("k", [1, 4])
def test_lossless_with_every_rejection_point(verifier_model, k):
    """The verifier's cache is cropped at every possible point; output stays exact."""
    for p, prompt in enumerate(PROMPTS[:2]):
        pattern = [(r * 7 + p) % (k + 1) for r in range(64)]
        out, ref, _ = run_scripted(verifier_model, prompt, pattern.__getitem__, 16, k)
        assert out == ref


def test_stops_at_a_stop_token_and_keeps_it(verifier_model):
    prompt = PROMPTS[0]
    ref = greedy_reference(verifier_model, prompt, 12)
    stop = ref[4]
    first = ref.index(stop)
    full = prompt + greedy_reference(verifier_model, prompt, 20)
    cfg = verifier_model.config
    stats = DecodeStats(3)
    out = speculative_generate(
        HFVerifier(verifier_model, [1, 3, 4]),
        ScriptedProposer(full, lambda r: 3, cfg.vocab_size, cfg.hidden_size, 3),
        prompt, 12, 3, 0.0, {stop}, as_generator(0), stats,
    )  # fmt: skip
    assert out == ref[: first + 1]


def test_lossless_with_a_real_draft_against_generate(verifier_model, tiny_draft: Path):
    """The EAGLE-3 draft (random layers) + the verifier's greedy generate(): token for token."""
    from speculators.artifacts.checkpoint import load_draft_config
    from speculators.artifacts.layer_ids import from_vllm_aux_layer_ids
    from speculators.models.eagle3 import Eagle3Draft

    draft, config = Eagle3Draft.from_checkpoint(tiny_draft), load_draft_config(tiny_draft)
    aux = from_vllm_aux_layer_ids(config["eagle_aux_hidden_state_layer_ids"])
    eos = verifier_model.config.eos_token_id
    for prompt in PROMPTS:
        expected = verifier_model.generate(
            torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=eos,
            pad_token_id=eos,
        )[0, len(prompt) :].tolist()  # fmt: skip
        if eos in expected:
            expected = expected[: expected.index(eos) + 1]
        stats = DecodeStats(3)
        out = speculative_generate(
            HFVerifier(verifier_model, aux), EagleProposer(draft), prompt, 24, 3, 0.0, {eos},
            as_generator(0), stats,
        )  # fmt: skip
        assert out == expected
        assert stats.num_drafts == stats.num_verifier_passes - 1


def _tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


@pytest.fixture
def one_thread():
    """Thousands of tiny ops: intra-op threads only add waiting on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_rejection_sampling_reproduces_the_verifier_distribution(one_thread):
    """Tokens out of a round are distributed as the verifier's p, not the draft's q: the first
    one exactly as p[0], the second (in rounds that accepted the first draft) as p[1]."""
    torch.manual_seed(0)
    vocab, k, trials, temperature = 5, 2, 4000, 0.8
    logits = torch.randn(k + 1, vocab) * 1.5
    p = torch.softmax(logits / temperature, dim=-1)
    q = torch.softmax(torch.randn(k, vocab) * 1.5, dim=-1)
    assert (
        _tv(q[0], p[0]) > 0.15 and _tv(q[1], p[1]) > 0.15
    )  # a sampler that trusted the draft would be far off
    gen = as_generator(1)
    first = torch.zeros(vocab)
    second = torch.zeros(vocab)
    drafts_NK = torch.stack(
        [torch.multinomial(q[i], trials, replacement=True, generator=gen) for i in range(k)], 1
    ).tolist()
    for drafts in drafts_NK:
        accepted, nxt = verify_round(drafts, q, logits, temperature, gen)
        tokens = [*drafts[:accepted], nxt]
        first[tokens[0]] += 1
        if len(tokens) > 1:
            second[tokens[1]] += 1
    # Each frequency's standard error is < 0.008 (< 0.012 for the second token); the TV bounds
    # are several sigma wide, far below the 0.15 a biased sampler would show.
    assert _tv(first / first.sum(), p[0]) < 0.05
    assert second.sum() > 1000
    assert _tv(second / second.sum(), p[1]) < 0.07


def test_greedy_verification_accepts_the_argmax_prefix():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    gen = as_generator(0)
    assert verify_round([1, 0], None, logits, 0.0, gen) == (2, 2)
    assert verify_round([1, 2], None, logits, 0.0, gen) == (1, 0)
    assert verify_round([2, 0], None, logits, 0.0, gen) == (0, 1)
