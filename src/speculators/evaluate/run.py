"""`speculators eval` core: load the draft through the user's loader, check it against the
verifier, decode the prompts speculatively and write the acceptance numbers vLLM reports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speculators.artifacts.atomic import atomic_write_json, atomic_write_text
from speculators.artifacts.checkpoint import load_draft
from speculators.artifacts.layer_ids import from_vllm_aux_layer_ids
from speculators.config.eval import EvalConfig
from speculators.devices import resolve_device
from speculators.errors import UserInputError, describe
from speculators.evaluate.decode import DecodeStats, as_generator, speculative_generate
from speculators.evaluate.models import EagleProposer, HFVerifier
from speculators.evaluate.prompts import load_prompts
from speculators.models.verifier import load_verifier_config

RESULTS_FILE = "eval_results.json"
GENERATIONS_FILE = "generations.jsonl"
VERIFIER_FLAG = "--verifier-name-or-path"
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
    data_path: str = ""
    seed: int = 0
    num_records: int = 0  # in the prompt file
    prompt_records: list[dict[str, Any]] = field(default_factory=list)  # {index, id} per prompt

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        return {
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


def _load_verifier(name: str, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model: Any = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as e:
        raise UserInputError(
            f"{VERIFIER_FLAG} {name}: cannot load the model ({describe(e)})."
        ) from None
    if not getattr(tokenizer, "chat_template", None):
        raise UserInputError(
            f"{VERIFIER_FLAG} {name}: the tokenizer has no chat template to render prompts with."
        )
    return model.to(device).eval(), tokenizer


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return {int(i) for i in ids if i is not None}


def run_eval(config: EvalConfig, on_progress: ProgressFn | None = None) -> EvalResult:
    """Speculatively decode `config.num_prompts` prompts and write eval_results.json."""
    start = time.perf_counter()
    device = resolve_device(config.device)
    dtype = DTYPES.get(config.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    draft, draft_config = load_draft(config.checkpoint_dir, device)
    named = draft_config.get("speculators_config", {}).get("verifier", {}).get("name_or_path")
    verifier_name = config.verifier_name_or_path or named
    if not verifier_name:
        raise UserInputError(
            f"{config.checkpoint_dir}: the checkpoint names no verifier; pass {VERIFIER_FLAG}."
        )
    vconfig = load_verifier_config(verifier_name, VERIFIER_FLAG)
    aux_ids = check_draft_fits(config.checkpoint_dir, draft_config, verifier_name, vconfig)
    model, tokenizer = _load_verifier(verifier_name, dtype, device)
    check_embeddings(config.checkpoint_dir, verifier_name, draft, model)
    draft = draft.to(dtype)
    k = config.num_speculative_tokens or _checkpoint_k(draft_config)
    prompts = load_prompts(
        config.data_path, tokenizer, config.num_prompts, config.seed, config.max_prompt_tokens
    )
    notes = [prompts.note] if prompts.note else []
    if len(prompts.prompts) < config.num_prompts:
        notes.append(f"only {len(prompts.prompts)} usable prompts in {config.data_path}")

    verifier, proposer = HFVerifier(model, aux_ids), EagleProposer(draft)
    stats, generator = DecodeStats(k), as_generator(config.seed)
    stops = stop_token_ids(model, tokenizer)
    lines = []
    try:
        for i, prompt in enumerate(prompts.prompts):
            out = speculative_generate(
                verifier, proposer, prompt.input_ids, config.max_new_tokens, k,
                config.temperature, stops, generator, stats,
            )  # fmt: skip
            record: dict[str, Any] = {"record_index": prompt.record_index, "id": prompt.record_id}
            record |= {"messages": prompt.messages, "output": tokenizer.decode(out)}
            lines.append(json.dumps({**record, "output_ids": out}))
            if on_progress is not None:
                on_progress(i + 1, len(prompts.prompts), stats)
    finally:
        verifier.close()

    out_dir = config.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    result = EvalResult(
        stats=stats,
        checkpoint_dir=config.checkpoint_dir,
        verifier=verifier_name,
        num_prompts=len(prompts.prompts),
        temperature=config.temperature,
        seconds=time.perf_counter() - start,
        results_path=out_dir / RESULTS_FILE,
        generations_path=out_dir / GENERATIONS_FILE,
        notes=notes,
        data_path=config.data_path,
        seed=config.seed,
        num_records=prompts.num_records,
        prompt_records=[{"index": p.record_index, "id": p.record_id} for p in prompts.prompts],
    )
    atomic_write_text(result.generations_path, "".join(line + "\n" for line in lines))
    atomic_write_json(result.results_path, result.to_json())
    return result


def _checkpoint_k(draft_config: dict) -> int:
    methods = draft_config.get("speculators_config", {}).get("proposal_methods") or [{}]
    return int(methods[0].get("speculative_tokens") or 3)
