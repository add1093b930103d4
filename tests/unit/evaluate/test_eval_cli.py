"""`speculators eval` through the CLI: the results file, prompt formats, and every refusal of a
draft that does not fit the verifier (exit 2, a message naming the flag, nothing destroyed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from draft_checkpoints import make_draft_checkpoint
from typer.testing import CliRunner

from speculators.cli import app


@pytest.fixture(scope="module")
def tiny_draft(tiny_llama: Path, tmp_path_factory) -> Path:
    return make_draft_checkpoint(tiny_llama, tmp_path_factory.mktemp("tiny-draft") / "0")


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def prompts_jsonl(tmp_path: Path) -> Path:
    lines = [
        {"conversations": [{"from": "human", "value": "What is the capital of France?"},
                           {"from": "gpt", "value": "Paris."}]},
        {"messages": [{"role": "system", "content": "You are helpful."},
                      {"role": "user", "content": "Tell me a story about a cat."}]},
        {"prompt": "def add(a, b):"},
        {"conversations": [{"from": "gpt", "value": "no user turn before this reply"}]},
    ]  # fmt: skip
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_eval_writes_vllm_metrics(tiny_draft: Path, prompts_jsonl: Path, tmp_path: Path):
    out = tmp_path / "eval"
    res = invoke(
        "eval", tiny_draft, "--data-path", prompts_jsonl, "--num-prompts", 5,
        "--max-new-tokens", 12, "--num-speculative-tokens", 2, "--output-dir", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    m = json.loads((out / "eval_results.json").read_text())
    # 3 usable prompts (the 4th has no user turn); the verifier came from the checkpoint.
    assert m["num_prompts"] == 3 and m["num_speculative_tokens"] == 2
    assert m["mean_acceptance_length"] == pytest.approx(
        1 + m["num_accepted_tokens"] / m["num_drafts"]
    )
    per_pos = [a / m["num_drafts"] for a in m["num_accepted_tokens_per_position"]]
    assert m["per_position_acceptance_rate"] == pytest.approx(per_pos)
    assert m["num_draft_tokens"] == 2 * m["num_drafts"]
    # One prefill per prompt plus one verification pass per draft round.
    assert m["num_verifier_forward_passes"] == m["num_drafts"] + 3
    gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 3 and all(1 <= len(g["output_ids"]) <= 12 for g in gens)
    # Which records the prompts are: from the end of the seed-0 permutation, usable ones only.
    import numpy as np

    lines = prompts_jsonl.read_text().splitlines()
    end = np.random.default_rng(0).permutation(len(lines))[::-1].tolist()
    usable = [i for i in end if i != 3]  # record 3 has no user turn
    assert [r["index"] for r in m["prompt_records"]] == [g["record_index"] for g in gens]
    assert [r["index"] for r in m["prompt_records"]] == usable[:3]
    assert m["num_records"] == len(lines) and m["data_path"] == str(prompts_jsonl)
    assert "mean acceptance length" in res.output


def test_sampling_is_reproducible_with_a_seed(tiny_draft: Path, prompts_jsonl: Path, tmp_path):
    args = ["--data-path", prompts_jsonl, "--num-prompts", 2, "--max-new-tokens", 10]
    args += ["--temperature", 0.9, "--seed", 3]
    runs = []
    for name in ("a", "b"):
        assert invoke("eval", tiny_draft, *args, "--output-dir", tmp_path / name).exit_code == 0
        runs.append((tmp_path / name / "generations.jsonl").read_text())
    assert runs[0] == runs[1]


def _refused(res, *words: str) -> None:
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "Traceback" not in res.output
    for word in words:
        assert word in text, text


@pytest.fixture
def earlier_results(tmp_path: Path) -> Path:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval_results.json").write_text('{"mean_acceptance_length": 2.5}')
    return out


def _eval_against(draft: Path, verifier: Path, out: Path, prompts: Path):
    # --overwrite: the refusal comes before anything is written, even when replacing is allowed.
    return invoke(
        "eval", draft, "--verifier-name-or-path", verifier, "--data-path", prompts,
        "--output-dir", out, "--max-new-tokens", 4, "--overwrite",
    )  # fmt: skip


def test_refuses_another_hidden_size(tiny_draft, prompts_jsonl, earlier_results, tmp_path):
    from conftest import build_tiny_llama

    other = build_tiny_llama(tmp_path / "wide", hidden_size=48)
    res = _eval_against(tiny_draft, other, earlier_results, prompts_jsonl)
    _refused(res, "hidden size 32", "48", "--verifier-name-or-path")
    assert json.loads((earlier_results / "eval_results.json").read_text()) == {
        "mean_acceptance_length": 2.5
    }


def test_refuses_another_model_of_the_same_shape(
    tiny_draft, prompts_jsonl, earlier_results, tmp_path
):
    from conftest import build_tiny_llama

    other = build_tiny_llama(tmp_path / "reseeded", seed=1)
    res = _eval_against(tiny_draft, other, earlier_results, prompts_jsonl)
    _refused(res, "embeddings differ", "--verifier-name-or-path")
    assert (earlier_results / "eval_results.json").read_text() == '{"mean_acceptance_length": 2.5}'


def test_refuses_another_vocab(tiny_llama, tiny_draft, prompts_jsonl, earlier_results, tmp_path):
    other = Path(shutil.copytree(tiny_llama, tmp_path / "bigger-vocab"))
    config = json.loads((other / "config.json").read_text())
    config["vocab_size"] += 64
    (other / "config.json").write_text(json.dumps(config))
    res = _eval_against(tiny_draft, other, earlier_results, prompts_jsonl)
    _refused(res, "vocab size", str(config["vocab_size"]), "--verifier-name-or-path")


def test_refuses_layer_ids_the_verifier_lacks(prompts_jsonl, earlier_results, tmp_path):
    from conftest import build_tiny_llama

    deep = build_tiny_llama(tmp_path / "deep", num_layers=8)
    shallow = build_tiny_llama(tmp_path / "shallow", num_layers=4)
    draft = make_draft_checkpoint(deep, tmp_path / "draft" / "0", layer_ids=[2, 4, 5, 7])
    res = _eval_against(draft, shallow, earlier_results, prompts_jsonl)
    _refused(res, "eagle_aux_hidden_state_layer_ids [3, 5, 6]", "has 4", "--verifier-name-or-path")


def test_bad_inputs_exit_2(tiny_draft, prompts_jsonl, tmp_path):
    _refused(invoke("eval", tmp_path / "nowhere"), "config.json")
    _refused(invoke("eval", tiny_draft, "--data-path", tmp_path / "none.jsonl"), "--data-path")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi"}\n{not json\n')
    _refused(invoke("eval", tiny_draft, "--data-path", bad), "--data-path", "line 2")
    _refused(invoke("eval", tiny_draft, "--num-speculative-tokens", 0), "--num-speculative-tokens")
    _refused(invoke("eval", tiny_draft, "--temperature", -1), "--temperature")
