"""vLLM 0.26+ on the real SmolLM2-135M-Instruct: `datagen --backend vllm` writes what the
transformers backend writes; vLLM loads our drafts (4 aux layers, a full-vocab draft) as its
EAGLE-3 speculator; `eval --engine vllm` agrees with `eval --engine hf` on the same prompts.

Needs vllm and a CUDA GPU (`pytest -m vllm`); skipped elsewhere."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.vllm,
    pytest.mark.gpu,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vllm is not installed (pip install 'speculators[datagen]' on a GPU machine)",
    ),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

NUM_SAMPLES, SEQ_LENGTH = 48, 256


def _datagen(model: Path, data: Path, out: Path, backend: str):
    from speculators.config import DatagenConfig
    from speculators.datagen.run import run_datagen

    return run_datagen(
        DatagenConfig(
            target_model_path=str(model), train_data_path=str(data), output_dir=out,
            max_samples=NUM_SAMPLES, seq_length=SEQ_LENGTH, token_freq_path=out / "token_freq.pt",
            backend=backend, device="cuda", dtype="bfloat16", batch_size=8,
            gpu_memory_utilization=0.3, cache_dir=out.parent / "cache",
        )
    )  # fmt: skip


def test_vllm_datagen_writes_what_transformers_writes(smollm2_dir, sharegpt_file, tmp_path):
    from speculators.artifacts.sample_files import list_sample_files
    from speculators.artifacts.samples import load_sample

    vllm_out, hf_out = tmp_path / "vllm", tmp_path / "hf"
    result = _datagen(smollm2_dir, sharegpt_file, vllm_out, "vllm")
    assert result.backend == "vllm" and result.num_generated == result.num_samples > 30
    _datagen(smollm2_dir, sharegpt_file, hf_out, "transformers")
    config = json.loads((vllm_out / "data_config.json").read_text())
    assert config["generation"]["backend"] == "vllm"
    assert config["reproducibility"]["package_versions"]["vllm"]
    files = list_sample_files(vllm_out)
    assert [f.name for f in files] == [f.name for f in list_sample_files(hf_out)]
    for a_path, b_path in zip(files, list_sample_files(hf_out)):
        a, b = load_sample(a_path), load_sample(b_path)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
        for x, y in [*zip(a.aux_hidden_states, b.aux_hidden_states)] + [
            (a.last_hidden_state, b.last_hidden_state)
        ]:
            err = (x.float() - y.float()).norm() / y.float().norm()
            assert x.dtype == torch.bfloat16 and err < 2e-2, f"{a_path.name}: {err:.3g}"
    assert torch.load(vllm_out / "token_freq.pt") == torch.load(hf_out / "token_freq.pt")

    # resume: the missing samples are computed again, the others kept as they are
    kept = {f.name: f.read_bytes() for f in files[3:]}
    for f in files[:3]:
        f.unlink()
    again = _datagen(smollm2_dir, sharegpt_file, vllm_out, "vllm")
    assert again.num_generated == 3
    assert all((vllm_out / name).read_bytes() == data for name, data in kept.items())


def _serve(verifier: Path, draft: Path, num_tokens: int = 16) -> dict[str, int]:
    """Generate with `draft` as vLLM's EAGLE-3 speculator; return the spec-decode counters."""
    from speculators.evaluate.vllm_engine import DRAFTS, engine_kwargs, run_engine
    from speculators.models.vllm import import_vllm

    vllm = import_vllm("test")
    settings = type(
        "S", (), {"concurrency": 2, "tensor_parallel_size": 1, "gpu_memory_utilization": 0.3,
                  "seed": 0},
    )  # fmt: skip
    kwargs = engine_kwargs(str(verifier), draft, 3, 256, settings)
    sampling = vllm.SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True)
    run = run_engine(vllm, kwargs, [[1, 2, 3, 4, 5], [6, 7, 8]], sampling, "test")
    assert [len(ids) for ids in run.output_ids] == [num_tokens, num_tokens]
    assert run.counters[DRAFTS] > 0
    return run.counters


def test_vllm_loads_a_four_aux_layer_draft(smollm2_dir, tmp_path):
    from draft_checkpoints import make_draft_checkpoint

    draft = make_draft_checkpoint(smollm2_dir, tmp_path / "d4", layer_ids=[2, 9, 16, 27, 29])
    config = json.loads((draft / "config.json").read_text())
    assert config["transformer_layer_config"]["num_aux_hidden_states"] == 4
    assert config["eagle_aux_hidden_state_layer_ids"] == [3, 10, 17, 28]
    _serve(smollm2_dir, draft)


def test_vllm_loads_a_full_vocab_draft(smollm2_dir, tmp_path):
    from draft_checkpoints import make_draft_checkpoint
    from safetensors import safe_open

    draft = make_draft_checkpoint(smollm2_dir, tmp_path / "full", full_vocab=True)
    with safe_open(str(draft / "model.safetensors"), "pt") as f:
        assert not {"d2t", "t2d"} & set(f.keys())  # noqa: SIM118 (safe_open is not a dict)
    _serve(smollm2_dir, draft)


@pytest.fixture(scope="module")
def trained_draft(smollm2_dir, sharegpt_file, tmp_path_factory) -> Path:
    """A draft trained on the GPU on vLLM-generated data: datagen -> vocab -> train."""
    from speculators.config import TrainConfig, VocabConfig
    from speculators.train.run import run_train
    from speculators.vocab import run_vocab

    root = tmp_path_factory.mktemp("vllm-draft")
    data = root / "data"
    from speculators.config import DatagenConfig
    from speculators.datagen.run import run_datagen

    run_datagen(
        DatagenConfig(
            target_model_path=str(smollm2_dir), train_data_path=str(sharegpt_file),
            output_dir=data, max_samples=300, seq_length=512, backend="vllm",
            token_freq_path=data / "token_freq.pt", gpu_memory_utilization=0.3,
            cache_dir=root / "cache",
        )
    )  # fmt: skip
    run_vocab(
        VocabConfig(
            token_freq_path=data / "token_freq.pt", draft_vocab_size=8192,
            target_model_path=str(smollm2_dir), output_path=root / "vocab",
        )
    )  # fmt: skip
    run_train(
        TrainConfig(
            verifier_name_or_path=str(smollm2_dir), data_path=data, save_path=root / "ckpt",
            epochs=4, lr=1e-3, total_seq_len=2048, d2t_path=root / "vocab" / "d2t.npy",
            t2d_path=root / "vocab" / "t2d.npy", num_workers=0, device="cuda",
            no_compile=True, attention="dense", val_fraction=0.0,
        )
    )  # fmt: skip
    return root / "ckpt" / "3"


def test_eval_engines_agree_on_acceptance(trained_draft, sharegpt_file, tmp_path):
    from speculators.config import EvalConfig
    from speculators.evaluate import run_eval

    common = {
        "checkpoint_dir": trained_draft, "data_path": str(sharegpt_file), "num_prompts": 24,
        "max_new_tokens": 96, "num_speculative_tokens": 3,
    }  # fmt: skip
    hf = run_eval(EvalConfig(**common, output_dir=tmp_path / "hf", device="cuda")).to_json()
    vl = run_eval(EvalConfig(**common, output_dir=tmp_path / "vllm", engine="vllm")).to_json()
    print(f"acceptance: hf {hf['mean_acceptance_length']:.3f} vllm "
          f"{vl['mean_acceptance_length']:.3f}; speedup {vl['speedup']:.2f}x; identical "
          f"{vl['greedy_outputs_identical']}/{vl['greedy_outputs_compared']}")  # fmt: skip
    assert vl["engine"] == "vllm" and vl["num_drafts"] > 0
    assert hf["mean_acceptance_length"] > 1.1  # a trained draft, not a trivial agreement
    assert abs(vl["mean_acceptance_length"] - hf["mean_acceptance_length"]) < 0.1
    rates = vl["per_position_acceptance_rate"]
    assert all(1 >= a >= b >= 0 for a, b in zip(rates, rates[1:]))
    assert vl["speedup"] > 0 and vl["greedy_outputs_compared"] == 24
