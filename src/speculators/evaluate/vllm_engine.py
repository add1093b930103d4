"""`speculators eval --engine vllm`: the verifier in vLLM with the draft as its EAGLE-3
speculator, and then without it, on the same prompts, timed. Acceptance comes from vLLM's own
spec-decode counters (`LLM.get_metrics()`), the speedup from output tokens per second of the two
runs, and the greedy outputs of the two are compared token for token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speculators.errors import UserInputError
from speculators.evaluate.decode import DecodeStats
from speculators.models import vllm as engine

FLAG = "--engine vllm"
DRAFTS, DRAFT_TOKENS, ACCEPTED = (
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
)
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"


@dataclass
class EngineRun:
    """One engine's pass over all prompts."""

    output_ids: list[list[int]]
    seconds: float
    counters: dict[str, Any]  # spec-decode counters of the timed pass only

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.output_ids)

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.seconds if self.seconds else 0.0


def spec_counters(metrics: list[Any]) -> dict[str, Any]:
    """The spec-decode counters of a `get_metrics()` snapshot, summed over engines/labels."""
    out: dict[str, Any] = {DRAFTS: 0, DRAFT_TOKENS: 0, ACCEPTED: 0, PER_POSITION: []}
    for metric in metrics:
        if metric.name == PER_POSITION:
            values = list(metric.values)
            total = out[PER_POSITION] + [0] * (len(values) - len(out[PER_POSITION]))
            out[PER_POSITION] = [a + b for a, b in zip(total, values + [0] * len(total))]
        elif metric.name in out:
            out[metric.name] += int(metric.value)
    return out


def counter_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    per_pos = [a - b for a, b in zip(after[PER_POSITION], before[PER_POSITION] + [0] * 64)]
    return {
        **{k: after[k] - before[k] for k in (DRAFTS, DRAFT_TOKENS, ACCEPTED)},
        PER_POSITION: per_pos,
    }


def decode_stats(counters: dict[str, Any], k: int, num_prompts: int, tokens: int) -> DecodeStats:
    """vLLM's counters as the DecodeStats `--engine hf` reports. Each draft round is one
    verifier pass, plus one prefill pass per prompt."""
    per_pos = (list(counters[PER_POSITION]) + [0] * k)[:k]
    return DecodeStats(
        num_speculative_tokens=k,
        num_drafts=counters[DRAFTS],
        num_draft_tokens=counters[DRAFT_TOKENS],
        num_accepted_tokens=counters[ACCEPTED],
        accepted_per_position=per_pos,
        num_verifier_passes=counters[DRAFTS] + num_prompts,
        num_generated_tokens=tokens,
    )


def engine_kwargs(
    verifier: str, draft: Path | None, k: int, max_model_len: int, settings: Any
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": verifier,
        "tokenizer": verifier,
        "dtype": "bfloat16",
        "max_model_len": max_model_len,
        "max_num_seqs": settings.concurrency,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "seed": settings.seed,
        "disable_log_stats": False,  # the spec-decode counters come from the stats
    }
    if draft is not None:
        kwargs["speculative_config"] = {
            "method": "eagle3",
            "model": str(draft),
            "num_speculative_tokens": k,
        }
    return kwargs


def run_engine(
    vllm: Any, kwargs: dict[str, Any], prompts: list[list[int]], sampling: Any, what: str
) -> EngineRun:
    """Start an engine, warm it up on the first prompt, then time all prompts in one call."""
    llm = engine.start_engine(vllm, kwargs, FLAG, what)
    try:
        tokens = [{"prompt_token_ids": ids} for ids in prompts]
        warm = vllm.SamplingParams(max_tokens=8, temperature=0.0)
        llm.generate(tokens[:1], warm, use_tqdm=False)
        before = spec_counters(llm.get_metrics())
        start = time.perf_counter()
        outputs = llm.generate(tokens, sampling, use_tqdm=False)
        seconds = time.perf_counter() - start
        after = spec_counters(llm.get_metrics())
    except UserInputError:
        raise
    except Exception as e:
        raise engine.engine_error(e, vllm, FLAG, f"failed while generating with {what}") from None
    finally:
        engine.shutdown(llm)
    return EngineRun(
        output_ids=[list(out.outputs[0].token_ids) for out in outputs],
        seconds=seconds,
        counters=counter_delta(after, before),
    )


@dataclass
class VllmComparison:
    speculative: EngineRun
    baseline: EngineRun
    stats: DecodeStats

    def to_json(self) -> dict[str, Any]:
        same = sum(a == b for a, b in zip(self.speculative.output_ids, self.baseline.output_ids))
        spec, base = self.speculative, self.baseline
        return {
            "speculative_tokens_per_second": spec.tokens_per_second,
            "baseline_tokens_per_second": base.tokens_per_second,
            "speedup": spec.tokens_per_second / base.tokens_per_second
            if base.tokens_per_second
            else 0.0,
            "speculative_seconds": spec.seconds,
            "baseline_seconds": base.seconds,
            "greedy_outputs_identical": same,
            "greedy_outputs_compared": len(spec.output_ids),
        }


def compare(
    checkpoint: Path,
    verifier: str,
    prompts: list[list[int]],
    k: int,
    max_new_tokens: int,
    stop_ids: set[int],
    settings: Any,
) -> VllmComparison:
    """Both runs over the same prompts (speculative first), and the acceptance of the first."""
    vllm = engine.import_vllm(FLAG)
    engine.require_gpu(FLAG, "use --engine hf, which also runs on CPUs")
    sampling = vllm.SamplingParams(
        max_tokens=max_new_tokens,
        temperature=settings.temperature,
        seed=settings.seed,
        stop_token_ids=sorted(stop_ids),
    )
    max_model_len = max(map(len, prompts)) + max_new_tokens + k + 1
    runs = []
    for draft in (checkpoint, None):
        kwargs = engine_kwargs(verifier, draft, k, max_model_len, settings)
        what = f"{verifier} with the draft {checkpoint}" if draft else verifier
        runs.append(run_engine(vllm, kwargs, prompts, sampling, what))
    speculative, baseline = runs
    stats = decode_stats(speculative.counters, k, len(prompts), speculative.num_tokens)
    return VllmComparison(speculative, baseline, stats)
