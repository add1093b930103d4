"""`speculators eval` on the real SmolLM2-135M-Instruct with a draft briefly trained on real
ShareGPT rows: at temperature 0 the output equals the verifier's own greedy generate()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smollm2_draft(smollm2_data: Path, smollm2_dir: Path, tmp_path_factory) -> Path:
    from speculators.config import TrainConfig, VocabConfig
    from speculators.train.run import run_train
    from speculators.vocab import run_vocab

    root = tmp_path_factory.mktemp("smollm2-draft")
    run_vocab(
        VocabConfig(
            token_freq_path=smollm2_data / "token_freq.pt",
            draft_vocab_size=4096,
            target_model_path=str(smollm2_dir),
            output_path=root / "vocab",
        )
    )
    run_train(
        TrainConfig(
            verifier_name_or_path=str(smollm2_dir), data_path=smollm2_data,
            save_path=root / "checkpoints", epochs=1, lr=1e-3, total_seq_len=512,
            d2t_path=root / "vocab" / "d2t.npy", t2d_path=root / "vocab" / "t2d.npy",
            max_steps_per_epoch=8, num_workers=0, device="cpu", val_fraction=0.0,
        )
    )  # fmt: skip
    return root / "checkpoints" / "0"


def test_greedy_eval_is_lossless_on_smollm2(smollm2_draft: Path, smollm2_dir: Path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speculators.config import EvalConfig
    from speculators.evaluate import run_eval

    prompts = tmp_path / "prompts.jsonl"
    questions = [
        "What is the capital of France?",
        "Write a Python function that adds two numbers.",
        "List three colours of the rainbow.",
    ]
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    result = run_eval(
        EvalConfig(
            checkpoint_dir=smollm2_draft, data_path=str(prompts), num_prompts=3,
            max_new_tokens=32, output_dir=tmp_path / "eval", device="cpu",
        )
    )  # fmt: skip
    s = result.stats
    assert s.num_speculative_tokens == 3  # the checkpoint's (train's --ttt-steps)
    assert s.num_verifier_passes == s.num_drafts + 3
    assert s.mean_acceptance_length == pytest.approx(1 + s.num_accepted_tokens / s.num_drafts)

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    gens = [
        json.loads(x)
        for x in (tmp_path / "eval" / "generations.jsonl").read_text().split("\n")
        if x
    ]
    eos = tok.eos_token_id
    for gen in gens:
        text = tok.apply_chat_template(gen["messages"], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = model.generate(
                ids, max_new_tokens=32, do_sample=False, eos_token_id=eos, pad_token_id=eos
            )[0, ids.shape[1] :].tolist()
        if eos in ref:
            ref = ref[: ref.index(eos) + 1]
        assert gen["output_ids"] == ref
    print(f"SmolLM2 draft, 8 training steps: acceptance length {s.mean_acceptance_length:.2f}")
