"""End to end on real data: SmolLM2-135M-Instruct hidden states of ShareGPT rows (datagen), the
draft vocab (vocab), then `speculators train` on the CPU; the saved draft, loaded the way a user
loads it, predicts the verifier's next token on held-out rows far better than chance."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from speculators.cli import app
from speculators.config import VocabConfig
from speculators.models.eagle3 import DecodeCache, Eagle3Draft
from speculators.train.data import index_data
from speculators.vocab import run_vocab

pytestmark = pytest.mark.e2e

DRAFT_VOCAB = 2048


def verifier_choices(hf, record) -> tuple[list[int], list[int]]:
    """(scored row positions i, the verifier's argmax at i+1 over its full vocab) for rows whose
    predicted token i+2 is an assistant token: the Hugging Face model's own norm and lm_head."""
    with torch.no_grad():
        logits = hf.lm_head(hf.model.norm(record["hidden_states"][-1].float()))
    mask, n = record["loss_mask"], len(record["input_ids"])
    rows = [i for i in range(n - 2) if mask[i + 2]]
    return rows, [int(logits[i + 1].argmax()) for i in rows]


def test_train_smollm2_sharegpt_on_cpu(smollm2_dir: Path, smollm2_data: Path, tmp_path: Path):
    vocab = run_vocab(
        VocabConfig(
            token_freq_path=smollm2_data / "token_freq.pt",
            draft_vocab_size=DRAFT_VOCAB,
            target_model_path=str(smollm2_dir),
            output_path=tmp_path / "vocab",
        )
    )
    save = tmp_path / "checkpoints"
    flags = {
        "--verifier-name-or-path": smollm2_dir,
        "--data-path": smollm2_data,
        "--d2t-path": vocab.d2t_path,
        "--t2d-path": vocab.t2d_path,
        "--save-path": save,
        # Rows of one sample each: many small updates learn fastest on a CPU budget.
        "--epochs": 2,
        "--lr": 1e-3,
        "--total-seq-len": 256,
        "--ttt-steps": 1,  # TTT itself is checked against sequential decoding in unit tests
        "--max-steps-per-epoch": 30,
        "--val-fraction": 0.15,
        "--num-workers": 0,
    }
    args = ["train", *[str(x) for kv in flags.items() for x in kv]]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in save.iterdir() if p.is_dir()) == ["0", "1"]  # + run.json

    # The vLLM-convention layer ids: datagen's aux ids + 1.
    config = json.loads((save / "1" / "config.json").read_text())
    layer_ids = json.loads((smollm2_data / "data_config.json").read_text())["hidden_states"][
        "layer_ids"
    ]
    assert config["eagle_aux_hidden_state_layer_ids"] == [i + 1 for i in layer_ids[:-1]]

    # Step-0 accuracy of the saved draft on the held-out rows, through the decoding path.
    draft = Eagle3Draft.from_checkpoint(save / "1")
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    index = index_data(smollm2_data, 1, 0.15, 0)  # the trainer's split (same seed)
    train_choices: Counter[int] = Counter()
    for i in index.train[:40]:
        train_choices.update(verifier_choices(hf, torch.load(index.files[i]))[1])
    majority = train_choices.most_common(1)[0][0]
    hits = majority_hits = total = 0
    for i in index.val:
        record = torch.load(index.files[i])
        rows, choices = verifier_choices(hf, record)
        ids = record["input_ids"]
        with torch.no_grad():
            fused = draft.fuse(torch.cat(record["hidden_states"][:-1], -1).float()[None, :-1])
            logits, _ = draft.step(
                ids[None, 1:], fused, torch.arange(len(ids) - 1)[None], DecodeCache()
            )
        predicted = draft.to_target_ids(logits[0].argmax(-1))
        hits += sum(int(predicted[r]) == c for r, c in zip(rows, choices))
        majority_hits += sum(c == majority for c in choices)
        total += len(rows)
    accuracy, baseline = hits / total, majority_hits / total
    # Chance for a 2048-way guess is 0.0005; always proposing the most common token scores
    # `baseline` (~0.05). Two short CPU epochs must beat both clearly.
    assert total > 1000
    assert accuracy > 1.5 * baseline and accuracy > 100 / DRAFT_VOCAB, (accuracy, baseline)
