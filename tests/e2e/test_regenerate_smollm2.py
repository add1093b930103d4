"""`speculators regenerate` with the real SmolLM2-135M-Instruct on real ShareGPT rows: replies end
at the model's own end-of-turn token, which the loss mask then supervises."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def test_smollm2_replies_end_at_its_end_of_turn_token(smollm2_dir, sharegpt_file, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    from speculators.chat_template import end_of_turn_tokens
    from speculators.config.regenerate import RegenerateConfig
    from speculators.datagen.preprocess import tokenize_conversation
    from speculators.regenerate import run_regenerate
    from speculators.sources import normalize_conversation

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    eos = GenerationConfig.from_pretrained(smollm2_dir).eos_token_id
    assert end_of_turn_tokens(tokenizer) == (tokenizer.convert_ids_to_tokens(eos),)  # <|im_end|>

    out = tmp_path / "regenerated.jsonl"
    config = RegenerateConfig(
        target_model_path=str(smollm2_dir),
        train_data_path=str(sharegpt_file),
        output_path=out,
        max_samples=4,
        seq_length=192,
        max_new_tokens=48,
        batch_size=4,
        device="cpu",
    )
    result = run_regenerate(config)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert result.total.records == len(records) >= 2
    for record in records:
        messages = normalize_conversation(record["conversations"], "test")
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        assert replies and all(r.strip() and "<|im_end|>" not in r for r in replies)
        # Rendered again, each reply that the model ended itself is supervised up to <|im_end|>.
        sample = tokenize_conversation(tokenizer, messages, seq_length=10_000)
        supervised = [t for t, m in zip(sample["input_ids"], sample["loss_mask"]) if m]
        assert supervised.count(eos) == len(replies)
