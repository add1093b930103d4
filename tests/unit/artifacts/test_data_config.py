"""data_config.json keeps every key of the reference example (SPEC §2)."""

from __future__ import annotations

import json

from speculators.artifacts.data_config import (
    DataConfig,
    format_schema,
    load_data_config,
    save_data_config,
)

REFERENCE_EXAMPLE = {
    "version": "2.0",
    "generated_at": "2025-12-03T16:03:02.471808+00:00",
    "speculators_version": "0.3.0",
    "reproducibility": {
        "command": "data_generation_offline.py --target-model-path m --max-samples 5000",
        "package_versions": {
            "torch": "2.8.0+cu128",
            "vllm": "0.11.0",
            "transformers": "4.57.3",
            "speculators": "0.3.0",
        },
        "gpu": "NVIDIA H100 80GB HBM3",
    },
    "model": {
        "target_model_path": "meta-llama/Llama-3.1-8B-Instruct",
        "tensor_parallel_size": 1,
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.8,
        "hidden_size": 4096,
    },
    "data": {
        "train_data_path": "sharegpt",
        "seq_length": 2048,
        "max_samples": 5000,
        "num_samples": 5000,
        "seed": 0,
        "chat_template_note": "Uses tokenizer's built-in chat template",
    },
    "hidden_states": {
        "layer_ids": [2, 16, 29, 31],
        "description": "Layers selected for EAGLE3 fusion and target logits",
    },
    "generation": {"cache_dir": "/home/x/.cache/huggingface/datasets"},
    "format": {
        "file_pattern": "data_{idx}.pt",
        "data_format_version": 1,
        "schema": {
            "input_ids": {
                "dtype": "torch.long",
                "shape": "[seq_len]",
                "description": "Tokenized input sequence",
            },
            "hidden_states": {
                "dtype": "list[torch.bfloat16]",
                "shape": "list of [seq_len, 4096]",
                "num_tensors": 4,
                "description": "Hidden states from 4 layers",
            },
            "loss_mask": {
                "dtype": "torch.long",
                "shape": "[seq_len]",
                "description": "1 for assistant tokens to train on, 0 elsewhere",
            },
        },
    },
}


def keys(obj, prefix=""):
    if not isinstance(obj, dict):
        return set()
    out = set()
    for k, v in obj.items():
        out.add(prefix + k)
        out |= keys(v, prefix + k + ".")
    return out


def test_reference_file_round_trips_with_every_key(tmp_path):
    config = DataConfig.model_validate(REFERENCE_EXAMPLE)
    save_data_config(tmp_path, config)
    written = json.loads((tmp_path / "data_config.json").read_text())
    assert keys(REFERENCE_EXAMPLE) <= keys(written)
    assert load_data_config(tmp_path).hidden_states.layer_ids == [2, 16, 29, 31]


def test_schema_block_matches_reference():
    assert format_schema(4096, 4) == REFERENCE_EXAMPLE["format"]["schema"]
