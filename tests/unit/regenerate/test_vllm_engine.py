"""The vllm engine: its arguments everywhere (no vllm needed), and against the transformers
engine where vllm and a CUDA GPU are present (`pytest -m vllm`; skipped elsewhere)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import build_tiny_llama

from speculators.config.regenerate import RegenerateConfig
from speculators.regenerate.vllm_engine import engine_kwargs, sampling_kwargs


def config(**kw) -> RegenerateConfig:
    return RegenerateConfig(target_model_path="/models/llama", train_data_path="sharegpt", **kw)


def test_engine_kwargs_map_the_flags():
    kw = engine_kwargs(config(tensor_parallel_size=2, gpu_memory_utilization=0.6, batch_size=64))
    assert kw["model"] == "/models/llama" and kw["tensor_parallel_size"] == 2
    assert kw["gpu_memory_utilization"] == 0.6 and kw["max_num_seqs"] == 64
    assert kw["distributed_executor_backend"] == "mp"
    assert kw["generation_config"] == "vllm"  # no sampling defaults from the checkpoint
    assert "max_model_len" not in kw
    assert engine_kwargs(config(seq_length=512))["max_model_len"] == 512


def test_sampling_kwargs():
    greedy = sampling_kwargs(config(), budget=7, seed=3, stop_ids={5, 2})
    assert greedy == {
        "temperature": 0.0, "max_tokens": 7, "stop_token_ids": [2, 5], "detokenize": False
    }  # fmt: skip
    sampled = sampling_kwargs(config(temperature=0.7), budget=7, seed=3, stop_ids={2})
    assert sampled["seed"] == 3 and sampled["temperature"] == 0.7


@pytest.mark.vllm
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed (pip install 'speculators[datagen]' on a GPU machine)",
)
def test_vllm_and_transformers_engines_agree(tmp_path):
    """Greedy replies of both engines in bf16: the same stops, and the same first tokens (longer
    greedy continuations may part where two kernels round a near-tie differently)."""
    from transformers import AutoTokenizer

    from speculators.regenerate.hf_engine import TransformersEngine
    from speculators.regenerate.vllm_engine import VllmEngine

    # head_dim 64: vLLM's attention kernels do not take the 8-wide heads of `tiny_llama`.
    path = build_tiny_llama(tmp_path / "m", hidden_size=256)
    tok = AutoTokenizer.from_pretrained(path)
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in ("Hello!", "What is the capital of France?", "def add(a, b):")
    ]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    cfg = config(device="cuda", dtype="bfloat16", gpu_memory_utilization=0.3)
    cfg = cfg.model_copy(update={"target_model_path": str(path)})
    stops = {tok.eos_token_id}
    budgets, seeds = [16, 16, 4], [0, 0, 0]
    hf = TransformersEngine.from_config(cfg, stops, tok.pad_token_id)
    want = hf.generate(prompts, budgets, seeds)
    hf.close()
    got = VllmEngine(cfg, stops).generate(prompts, budgets, seeds)
    for a, b, budget in zip(got, want, budgets):
        assert len(a.token_ids) <= budget and a.stopped == (len(a.token_ids) < budget)
        assert a.token_ids[:3] == b.token_ids[:3]
