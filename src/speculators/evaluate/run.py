"""`speculators eval` core: check the draft against the verifier, decode the prompts
speculatively (in this process, `--engine hf`, or in vLLM, `--engine vllm`) and write the
acceptance numbers vLLM reports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speculators.artifacts.atomic import atomic_write_json, atomic_write_text
from speculators.artifacts.checkpoint import load_draft_config
from speculators.artifacts.layer_ids import from_vllm_aux_layer_ids
from speculators.config.eval import EvalConfig
from speculators.devices import resolve_device
from speculators.errors import UserInputError, describe
from speculators.evaluate import checks
from speculators.evaluate.decode import DecodeStats, as_generator, speculative_generate
from speculators.evaluate.models import EagleProposer, HFVerifier
from speculators.evaluate.prompts import load_prompts
from speculators.models.eagle3 import Eagle3Draft
from speculators.models.verifier import load_chat_tokenizer, load_verifier_config

RESULTS_FILE = checks.RESULTS_FILE
GENERATIONS_FILE = checks.GENERATIONS_FILE
VERIFIER_FLAG = checks.VERIFIER_FLAG
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}

# on_progress(prompts done, prompts total, stats so far)
ProgressFn = Callable[[int, int, DecodeStats], None]


@dataclass
class EvalResult:
    stats: DecodeStats
    checkpoint_dir: Path
    verifier: str
    num_prompts: int
    temperature: float
    seconds: float
    results_path: Path
    generations_path: Path
    notes: list[str] = field(default_factory=list)
    engine: str = "hf"
    comparison: dict[str, Any] | None = None  # --engine vllm: speedup and output agreement
    data_path: str = ""
    seed: int = 0
    num_records: int = 0  # in the prompt file
    prompt_records: list[dict[str, Any]] = field(default_factory=list)  # {index, id} per prompt

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        return {
            "engine": self.engine,
            "mean_acceptance_length": s.mean_acceptance_length,
            "per_position_acceptance_rate": s.per_position_acceptance_rate,
            "draft_acceptance_rate": s.draft_acceptance_rate,
            "verifier_forward_passes_per_token": s.verifier_passes_per_token,
            "num_speculative_tokens": s.num_speculative_tokens,
            "num_prompts": self.num_prompts,
            "num_generated_tokens": s.num_generated_tokens,
            "num_drafts": s.num_drafts,
            "num_draft_tokens": s.num_draft_tokens,
            "num_accepted_tokens": s.num_accepted_tokens,
            "num_accepted_tokens_per_position": s.accepted_per_position,
            "num_verifier_forward_passes": s.num_verifier_passes,
            "temperature": self.temperature,
            "seconds": self.seconds,
            "tokens_per_second": s.num_generated_tokens / self.seconds if self.seconds else 0.0,
            "checkpoint_dir": str(self.checkpoint_dir),
            "verifier": self.verifier,
            "notes": self.notes,
            # which records the prompts are: checkable against the conversations trained on
            "data_path": self.data_path,
            "seed": self.seed,
            "num_records": self.num_records,
            "prompt_records": self.prompt_records,
            **(self.comparison or {}),
        }


def _refuse(checkpoint: Path, verifier: str, what: str) -> UserInputError:
    return UserInputError(
        f"the draft in {checkpoint} does not fit the verifier {verifier}: {what}. A draft only "
        f"works with the verifier it was trained on; pass that one with {VERIFIER_FLAG} (or omit "
        "the flag to use the verifier the checkpoint names)."
    )


def check_draft_fits(
    checkpoint: Path, draft_config: dict, verifier: str, vconfig: Any
) -> list[int]:
    """Hidden size, vocab, architecture and layer ids of draft and verifier agree; returns the
    draft's aux layer ids in our convention (vLLM's ids - 1)."""
    n, hidden, vocab = vconfig.num_hidden_layers, vconfig.hidden_size, vconfig.vocab_size
    layer = draft_config["transformer_layer_config"]
    if draft_config.get("target_hidden_size", layer["hidden_size"]) != hidden:
        got = draft_config.get("target_hidden_size", layer["hidden_size"])
        raise _refuse(checkpoint, verifier, f"hidden size {got} vs the verifier's {hidden}")
    if layer["vocab_size"] != vocab:
        raise _refuse(checkpoint, verifier, f"vocab size {layer['vocab_size']} vs {vocab}")
    named = draft_config.get("speculators_config", {}).get("verifier", {})
    archs, mine = named.get("architectures") or [], getattr(vconfig, "architectures", None) or []
    if archs and mine and list(archs) != list(mine):
        raise _refuse(checkpoint, verifier, f"it was trained for {archs}, this verifier is {mine}")
    vllm_ids = draft_config["eagle_aux_hidden_state_layer_ids"]
    ids = from_vllm_aux_layer_ids(vllm_ids)
    if any(not 0 <= i < n - 1 for i in ids):
        raise _refuse(
            checkpoint,
            verifier,
            f"its aux layers (eagle_aux_hidden_state_layer_ids {vllm_ids}, vLLM convention) need "
            f"a verifier with more than {max(vllm_ids)} decoder layers; this one has {n}",
        )
    return ids


def check_embeddings(checkpoint: Path, verifier: str, draft: Any, model: Any) -> None:
    """The draft's frozen embeddings are the verifier's (stored in bf16): a draft of another
    model with the same shapes is caught here."""
    mine = model.get_input_embeddings().weight.detach()
    theirs = draft.embed_tokens.weight.detach().to(mine.device)
    diff = (mine.to(torch.bfloat16).float() - theirs.float()).abs().max()
    if float(diff) > 1e-2 * float(mine.abs().max()):
        raise _refuse(
            checkpoint, verifier, "its token embeddings differ from the verifier's (another model)"
        )


def _load_verifier(name: str, dtype: torch.dtype, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as e:
        raise UserInputError(
            f"{VERIFIER_FLAG} {name}: cannot load the model ({describe(e)})."
        ) from None
    return model.to(device).eval()


def stop_token_ids(generation_config: Any, tokenizer: Any) -> set[int]:
    """The tokens that end a reply: the tokenizer's eos and the generation config's."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return {int(i) for i in ids if i is not None}


def _generation_config(name: str) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(name)
    except (OSError, ValueError):  # a model without generation_config.json
        return None


@dataclass
class _Setup:
    """What both engines need, checked before either starts."""

    draft_config: dict
    verifier: str
    aux_ids: list[int]
    tokenizer: Any
    prompts: Any  # PromptSet
    k: int
    notes: list[str]


def _setup(config: EvalConfig) -> _Setup:
    checks.check_outputs(config)
    draft_config = load_draft_config(config.checkpoint_dir)
    named = draft_config.get("speculators_config", {}).get("verifier", {}).get("name_or_path")
    verifier_name = config.verifier_name_or_path or named
    if not verifier_name:
        raise UserInputError(
            f"{config.checkpoint_dir}: the checkpoint names no verifier; pass {VERIFIER_FLAG}."
        )
    vconfig = load_verifier_config(verifier_name, VERIFIER_FLAG)
    aux_ids = check_draft_fits(config.checkpoint_dir, draft_config, verifier_name, vconfig)
    notes = checks.check_verifier(
        config.checkpoint_dir, draft_config, verifier_name, config.allow_verifier_mismatch
    )
    tokenizer = load_chat_tokenizer(
        verifier_name, VERIFIER_FLAG, "prompts cannot be rendered the way the model was trained"
    )
    prompts = load_prompts(
        config.data_path, tokenizer, config.num_prompts, config.seed, config.max_prompt_tokens
    )
    notes += [prompts.note] if prompts.note else []
    if len(prompts.prompts) < config.num_prompts:
        notes.append(f"only {len(prompts.prompts)} usable prompts in {config.data_path}")
    k = config.num_speculative_tokens or _checkpoint_k(draft_config)
    return _Setup(draft_config, verifier_name, aux_ids, tokenizer, prompts, k, notes)


def run_eval(config: EvalConfig, on_progress: ProgressFn | None = None) -> EvalResult:
    """Speculatively decode `config.num_prompts` prompts and write eval_results.json."""
    start = time.perf_counter()
    setup = _setup(config)
    if config.engine == "vllm":
        stats, outputs, comparison = _decode_vllm(config, setup)
    else:
        stats, outputs = _decode_hf(config, setup, on_progress)
        comparison = None
    lines = [
        json.dumps(
            {"record_index": p.record_index, "id": p.record_id, "messages": p.messages}
            | {"output": setup.tokenizer.decode(out), "output_ids": out}
        )
        for p, out in zip(setup.prompts.prompts, outputs)
    ]
    out_dir = config.output_dir
    checks.clear_outputs(out_dir)
    result = EvalResult(
        stats=stats,
        checkpoint_dir=config.checkpoint_dir,
        verifier=setup.verifier,
        num_prompts=len(setup.prompts.prompts),
        temperature=config.temperature,
        seconds=time.perf_counter() - start,
        results_path=out_dir / RESULTS_FILE,
        generations_path=out_dir / GENERATIONS_FILE,
        notes=setup.notes,
        engine=config.engine,
        comparison=comparison,
        data_path=config.data_path,
        seed=config.seed,
        num_records=setup.prompts.num_records,
        prompt_records=[
            {"index": p.record_index, "id": p.record_id} for p in setup.prompts.prompts
        ],
    )
    atomic_write_text(result.generations_path, "".join(line + "\n" for line in lines))
    atomic_write_json(result.results_path, result.to_json())
    return result


def _decode_hf(
    config: EvalConfig, setup: _Setup, on_progress: ProgressFn | None
) -> tuple[DecodeStats, list[list[int]]]:
    """Chain speculative decoding in this process, one prompt at a time."""
    device = resolve_device(config.device)
    dtype = DTYPES.get(config.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    draft = Eagle3Draft.from_checkpoint(config.checkpoint_dir, device)
    model = _load_verifier(setup.verifier, dtype, device)
    if not config.allow_verifier_mismatch:
        check_embeddings(config.checkpoint_dir, setup.verifier, draft, model)
    draft = draft.to(dtype)
    verifier, proposer = HFVerifier(model, setup.aux_ids), EagleProposer(draft)
    stats, generator = DecodeStats(setup.k), as_generator(config.seed)
    stops = stop_token_ids(model.generation_config, setup.tokenizer)
    outputs = []
    prompts = setup.prompts.prompts
    try:
        for i, prompt in enumerate(prompts):
            out = speculative_generate(
                verifier, proposer, prompt.input_ids, config.max_new_tokens, setup.k,
                config.temperature, stops, generator, stats,
            )  # fmt: skip
            outputs.append(out)
            if on_progress is not None:
                on_progress(i + 1, len(prompts), stats)
    finally:
        verifier.close()
    return stats, outputs


def _decode_vllm(
    config: EvalConfig, setup: _Setup
) -> tuple[DecodeStats, list[list[int]], dict[str, Any]]:
    """vLLM with the draft and without it (evaluate/vllm_engine.py)."""
    from speculators.evaluate.vllm_engine import compare

    stops = stop_token_ids(_generation_config(setup.verifier), setup.tokenizer)
    prompts = [p.input_ids for p in setup.prompts.prompts]
    result = compare(
        config.checkpoint_dir, setup.verifier, prompts, setup.k, config.max_new_tokens, stops,
        config,
    )  # fmt: skip
    return result.stats, result.speculative.output_ids, result.to_json()


def _checkpoint_k(draft_config: dict) -> int:
    methods = draft_config.get("speculators_config", {}).get("proposal_methods") or [{}]
    return int(methods[0].get("speculative_tokens") or 3)
