"""Everything `speculators regenerate` decides before its first reply: the checks that can fail on
user input (model, chat template, data, output path), the conversations it takes, and whether
the output file is started, resumed, or refused."""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from speculators import __version__
from speculators.artifacts.regenerated import (
    RegenerationMeta,
    load_regeneration_meta,
    meta_path,
    save_regeneration_meta,
    truncate_uncommitted,
)
from speculators.chat_template import end_of_turn_tokens
from speculators.config.base import flag
from speculators.config.regenerate import RegenerateConfig
from speculators.devices import resolve_device
from speculators.errors import UserInputError, describe
from speculators.regenerate.dialogue import Dialogue, Stats, prompt_segments
from speculators.sources import RawData, load_raw_data, normalize_conversation

MODEL_FLAG = "--target-model-path"


@dataclass
class Plan:
    tokenizer: Any
    raw: RawData
    order: list[int]  # source indices of the selected conversations, in order
    record_ids: list[str]  # per selected conversation: the source's `id`, else its index
    segments: list[list[list[dict[str, str]]]]  # per selected conversation
    stop_ids: set[int]
    pad_id: int
    meta: RegenerationMeta  # this run's settings
    conversations_done: int  # by earlier runs (0: a fresh start)
    stats_so_far: Stats
    note: str | None

    def dialogues(self, lo: int, hi: int) -> list[Dialogue]:
        out = []
        for pos in range(lo, hi):
            d = Dialogue(pos, self.order[pos], self.record_ids[pos], self.segments[pos])
            if not d.segments:
                d.end("no_user_turn")
            out.append(d)
        return out


def _stop_ids(tokenizer: Any, path: str) -> set[int]:
    """Where a reply ends: eos of the tokenizer and of generation_config.json, and the
    template's end-of-turn token."""
    from transformers import GenerationConfig

    ids: set[Any] = {tokenizer.eos_token_id}
    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos])
    except OSError:  # no generation_config.json
        pass
    ids.update(tokenizer.convert_tokens_to_ids(t) for t in end_of_turn_tokens(tokenizer))
    found = {int(i) for i in ids if i is not None and i != tokenizer.unk_token_id}
    if not found:
        raise UserInputError(
            f"{MODEL_FLAG} {path}: neither the tokenizer nor generation_config.json names an "
            "end-of-sequence token and the chat template writes no end-of-turn token, so a "
            "reply would never end. Set `eos_token` in its tokenizer_config.json."
        )
    return found


def _check_writable(output: Path) -> None:
    if output.is_dir():
        raise UserInputError(f"--output-path {output} is a directory; give a .jsonl file path.")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=".tmp-"):
            pass
        if output.exists() and not os.access(output, os.W_OK):
            raise PermissionError(f"{output} is read-only")
    except OSError as e:
        raise UserInputError(
            f"--output-path {output}: cannot write there ({describe(e)}). Pick a directory you "
            "can write to."
        ) from None


def _new_meta(config: RegenerateConfig, raw: RawData, num_selected: int, command: str | None):
    path = Path(config.target_model_path)
    return RegenerationMeta.model_validate(
        {
            "speculators_version": __version__,
            "generated_at": datetime.now(timezone.utc).isoformat(),
            "command": command or "speculators regenerate (Python API)",
            "verifier": config.target_model_path,
            "verifier_resolved": str(path.resolve()) if path.exists() else config.target_model_path,
            "source": {
                "train_data_path": config.train_data_path,
                "fingerprint": raw.fingerprint,
                "num_records": len(raw.dataset),
            },
            "selection": {
                "seed": config.seed,
                "max_samples": config.max_samples,
                "num_selected": num_selected,
            },
            "sampling": {
                "temperature": config.temperature,
                "max_new_tokens": config.max_new_tokens,
                "seq_length": config.seq_length,
            },
            "engine": {},
        }
    )


def _resume_point(config: RegenerateConfig, meta: RegenerationMeta) -> tuple[int, Stats]:
    """Conversations already done and their counts; refuses a foreign or different output."""
    out = config.output_path
    if not out.exists():
        return 0, Stats()
    try:
        old = load_regeneration_meta(out)
    except UserInputError:
        if not config.overwrite:
            raise
        old = None
    if old is None:
        why = f"was not written by `speculators regenerate` (no {meta_path(out).name} beside it)"
    elif old.settings() != meta.settings():
        new = meta.settings()
        diffs = [
            "the data in --train-data-path changed"
            if k == "source_fingerprint"
            else f"{flag(k)} was {v!r}, now {new[k]!r}"
            for k, v in old.settings().items()
            if v != new[k]
        ]
        why = f"holds conversations regenerated with other settings ({'; '.join(diffs)})"
    else:
        return old.progress.conversations_done, Stats(**old.stats)
    if config.overwrite:
        return 0, Stats()
    raise UserInputError(
        f"--output-path {out} {why}. Refusing to replace it: rerun with its original flags to "
        "resume, pick another --output-path, or pass --overwrite to start over."
    )


def check_no_user_turns(config: RegenerateConfig, segments: list[list[Any]]) -> None:
    if not any(segments):
        raise UserInputError(
            f"--train-data-path {config.train_data_path}: none of the {len(segments)} selected "
            "conversations has a user turn for the verifier to answer. Conversations need "
            "{role: user, content} (or {from: human, value}) turns."
        )


def make_plan(config: RegenerateConfig, backend_name: str, command: str | None) -> Plan:
    """Every check that can fail on user input, in the order a user would fix them."""
    from speculators.models.verifier import load_chat_tokenizer, load_verifier_config

    if backend_name == "transformers":
        resolve_device(config.device)
    load_verifier_config(config.target_model_path, MODEL_FLAG)
    tokenizer = load_chat_tokenizer(
        config.target_model_path,
        MODEL_FLAG,
        "the verifier cannot be asked for replies the way it was trained to give them",
    )
    _check_writable(config.output_path)
    raw = load_raw_data(config.train_data_path, config.cache_dir)
    if len(raw.dataset) == 0:
        raise UserInputError(
            f"--train-data-path {config.train_data_path}: the data set is empty (no "
            "conversations). Point it at a file or dataset with at least one conversation."
        )
    order = np.random.default_rng(config.seed).permutation(len(raw.dataset))
    order = order[: config.max_samples].tolist()
    selected = raw.dataset.select(order)
    rows = selected[raw.column]
    has_ids = "id" in selected.column_names
    record_ids = [str(i) for i in selected["id"]] if has_ids else [str(i) for i in order]
    where = f"--train-data-path {config.train_data_path}"
    segments = [prompt_segments(normalize_conversation(turns, where)) for turns in rows]
    check_no_user_turns(config, segments)
    meta = _new_meta(config, raw, len(order), command)
    done, stats = _resume_point(config, meta)
    stop_ids = _stop_ids(tokenizer, config.target_model_path)
    pad = min(stop_ids) if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)
    return Plan(
        tokenizer, raw, order, record_ids, segments, stop_ids, pad, meta, done, stats, raw.note
    )


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def start_output(config: RegenerateConfig, plan: Plan, engine: Any) -> RegenerationMeta:
    """Start the output file (fresh: empty) or cut a resumed one back to its last committed
    chunk; write the sidecar. Called once the engine has loaded, so a model that fails to load
    leaves an earlier output untouched."""
    meta = plan.meta
    meta.engine = {
        "backend": engine.name,
        "device": engine.device,
        "dtype": engine.dtype,
        "package_versions": {p: _version(p) for p in ("torch", "transformers", "vllm")},
    }
    out = config.output_path
    if plan.conversations_done == 0:
        out.write_bytes(b"")
    else:
        old = load_regeneration_meta(out)
        assert old is not None  # _resume_point found it
        truncate_uncommitted(out, old.progress.num_bytes)
        meta.generated_at, meta.progress = old.generated_at, old.progress
        meta.stats = old.stats
    save_regeneration_meta(out, meta)
    return meta
