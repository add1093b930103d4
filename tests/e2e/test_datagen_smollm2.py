"""Datagen on the real SmolLM2-135M-Instruct (ChatML template without generation markers) over
real ShareGPT rows: layer convention, loss masks and token counts checked independently."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from speculators.artifacts.sample_files import list_sample_files
from speculators.artifacts.samples import load_sample

pytestmark = pytest.mark.e2e


def _masked_runs(tokenizer, ids, mask):
    runs = []
    for on, group in itertools.groupby(zip(ids.tolist(), mask.tolist()), key=lambda x: x[1]):
        if on:
            runs.append(tokenizer.decode([i for i, _ in group]))
    return runs


def test_smollm2_sharegpt(smollm2_data, smollm2_dir, sharegpt_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2_data / "data_config.json").read_text())
    files = list_sample_files(smollm2_data)
    assert config["data"]["num_samples"] == len(files) > 80  # 120 rows, a few too long to fit
    assert config["hidden_states"]["layer_ids"] == [2, 15, 27, 29]  # n = 30
    assert config["hidden_states"]["vllm_aux_layer_ids"] == [3, 16, 28]

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    raw = sharegpt_file.read_text()  # assistant runs are searched as JSON-escaped text
    counts: dict[int, int] = {}
    for path in files[:3]:
        s = load_sample(path)
        assert s.input_ids.shape[0] <= 256 and s.loss_mask.sum() > 0
        # Each supervised run is the text of an assistant turn and the verifier's stop token
        # (generation_config's eos, <|im_end|>) after it; a prefix of that if truncated.
        runs = _masked_runs(tokenizer, s.input_ids, s.loss_mask)
        cut_at_end = (
            bool(s.loss_mask[-1]) and s.input_ids[-1] != model.generation_config.eos_token_id
        )
        for k, run in enumerate(runs):
            eos = tokenizer.decode([model.generation_config.eos_token_id])
            assert run.endswith(eos) or (cut_at_end and k == len(runs) - 1)
            text = run.removesuffix(eos).strip()
            escaped = {json.dumps(text, ensure_ascii=a)[1:-1] for a in (True, False)}
            assert any(e in raw for e in escaped)
        assert "<|im_start|>" not in "".join(_masked_runs(tokenizer, s.input_ids, s.loss_mask))
        with torch.no_grad():
            hs = model(s.input_ids[None], output_hidden_states=True).hidden_states
        for k, layer in enumerate([2, 15, 27]):
            torch.testing.assert_close(
                s.aux_hidden_states[k].float(), hs[layer + 1][0], atol=0.05, rtol=0.02
            )
        normed = model.model.norm(s.last_hidden_state.float()[None])[0]
        torch.testing.assert_close(normed, hs[-1][0], atol=0.05, rtol=0.02)
        assert not torch.allclose(s.last_hidden_state.float(), hs[-1][0], atol=0.05)
    for path in files:
        s = load_sample(path)
        for t in s.input_ids[s.loss_mask == 1].tolist():
            counts[t] = counts.get(t, 0) + 1
    assert torch.load(smollm2_data / "token_freq.pt") == counts
