"""`speculators datagen` core: conversations -> data_{idx}.pt, data_config.json, token_freq.pt.

Order of work: every check that can fail on user input runs before anything is written, then
token counts and data_config.json, then the samples that are still missing (a rerun resumes),
in batches of similar length (generate.py: files are written on background threads while the
next batch runs).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speculators.artifacts.atomic import remove_stale_temps
from speculators.artifacts.data_config import DATA_CONFIG_FILE
from speculators.artifacts.layer_ids import resolve_layer_ids
from speculators.artifacts.output_paths import check_output_dir as check_writable_dir
from speculators.artifacts.output_paths import check_output_file
from speculators.artifacts.provenance import VerifierFingerprint
from speculators.artifacts.regenerated import load_regeneration_meta
from speculators.artifacts.sample_files import sample_index, sample_path
from speculators.artifacts.token_freq import TokenFreqMeta, save_token_freq
from speculators.config import DatagenConfig
from speculators.config.datagen import VLLM_PROCESSES
from speculators.datagen.generate import ProgressFn, generate_samples, length_sorted_batches
from speculators.datagen.outputs import check_output_dir, check_token_freq_path, write_data_config
from speculators.datagen.preprocess import (
    TokenizedData,
    check_tokenizer,
    count_supervised_tokens,
    default_cache_dir,
    tokenize_dataset,
)
from speculators.datagen.shards import Shard, join
from speculators.datagen.writer import SampleWriter
from speculators.devices import resolve_device
from speculators.errors import UserInputError
from speculators.peers import peer_failed
from speculators.sources import load_raw_data


@dataclass
class DatagenResult:
    output_dir: Path
    data_config_path: Path
    token_freq_path: Path
    layer_ids: list[int]
    backend: str
    num_samples: int  # samples in the output dir
    num_generated: int  # of which computed by this run (the rest existed: resumed)
    num_tokens: int  # over all samples
    num_supervised_tokens: int  # loss mask 1
    num_skipped_no_assistant: int
    num_skipped_template_error: int
    num_skipped_truncated: int  # no assistant token within --seq-length
    num_generated_tokens: int  # tokens run through the verifier by this run
    bytes_written: int
    seconds: float  # the whole run
    generation_seconds: float  # the forward passes and writes only
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return (
            self.num_generated_tokens / self.generation_seconds if self.generation_seconds else 0.0
        )


def _empty_data_error(config: DatagenConfig, data: TokenizedData, total: int) -> UserInputError:
    return UserInputError(
        f"--train-data-path {config.train_data_path}: none of the {total} conversations is "
        f"usable: {data.num_no_assistant} have no assistant turn, {data.num_template_errors} "
        f"were rejected by the chat template, {data.num_no_supervised} have no assistant token "
        f"within --seq-length {config.seq_length}. Check that conversations have assistant "
        "turns ({role: assistant, content} or {from: gpt, value}) or raise --seq-length."
    )


def _notes(notes_so_far: list[str | None], layer_ids: list[int], num_layers: int) -> list[str]:
    notes = [n for n in notes_so_far if n]
    if layer_ids[-1] != num_layers - 1:
        notes.append(
            f"the last --layer-ids entry ({layer_ids[-1]}) is not the verifier's last layer "
            f"({num_layers - 1}); training takes its targets from the last entry."
        )
    return notes


def _tp_note(config: DatagenConfig, backend_name: str) -> str | None:
    if backend_name == "transformers" and config.tensor_parallel_size > 1:
        return "--tensor-parallel-size applies to the vllm backend; transformers used one device."
    return None


def _fingerprint(config: DatagenConfig, data: TokenizedData, layer_ids: list[int]) -> str:
    """What the samples depend on: the tokenized data (tokenizer, data, seq_length, seed,
    max_samples), the model, the layers and how they are stored. Not batch size, device or
    backend."""
    path = Path(config.target_model_path)
    model = str(path.resolve()) if path.exists() else config.target_model_path
    # fp8 files hold other numbers; bf16 dirs keep the fingerprint they always had
    storage = [] if config.hidden_states_dtype == "bf16" else [config.hidden_states_dtype]
    blob = json.dumps([data.fingerprint, model, layer_ids, *storage])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _regeneration(config: DatagenConfig) -> tuple[dict[str, Any] | None, str | None]:
    """Provenance of conversations written by `speculators regenerate` (None for other data),
    and a note naming the model that wrote the replies."""
    path = Path(config.train_data_path).expanduser()
    meta = load_regeneration_meta(path) if path.is_file() else None
    if meta is None:
        return None, None
    t, n = meta.sampling.temperature, meta.sampling.max_new_tokens
    note = f"replies regenerated by {meta.verifier} (temperature {t:g}, at most {n} new tokens)"
    if not meta.progress.complete:
        done, selected = meta.progress.conversations_done, meta.selection.num_selected
        note += (
            f"; INCOMPLETE: {done} of {selected} conversations done (rerun `speculators "
            "regenerate` with the same flags to finish)"
        )
    model = Path(config.target_model_path)
    if (str(model.resolve()) if model.exists() else str(model)) != meta.verifier_resolved:
        note += "; by another model than --target-model-path"
    return meta.provenance(), note


@dataclass
class _Plan:
    """Everything decided before the first write."""

    verifier: Any
    layer_ids: list[int]
    data: TokenizedData
    fingerprint: str
    counts: dict[int, int]
    meta: TokenFreqMeta
    backend_name: str
    notes: list[str]
    verifier_fingerprint: VerifierFingerprint | None  # None: the model is not local yet
    regenerated_from: dict[str, Any] | None


def _check_output_locations(config: DatagenConfig) -> None:
    """Every path datagen writes, before any work: writable, and no clash between them."""
    check_writable_dir(config.output_dir, "--output-dir")
    check_output_file(config.token_freq_path, "--token-freq-path")
    if config.cache_dir is not None:
        check_writable_dir(config.cache_dir, "--cache-dir")
    else:
        check_writable_dir(default_cache_dir(), "--cache-dir (default: the datasets cache)")
    freq = config.token_freq_path
    if freq.parent.resolve() == config.output_dir.resolve() and sample_index(freq) is not None:
        raise UserInputError(
            f"--token-freq-path {freq} has the name of a sample file in --output-dir; "
            "name it e.g. token_freq.pt."
        )


def _verifier_fingerprint(config: DatagenConfig) -> VerifierFingerprint | None:
    from speculators.models.fingerprint import verifier_fingerprint

    try:
        return verifier_fingerprint(config.target_model_path, "--target-model-path")
    except UserInputError:
        return None  # a hub model not downloaded yet: fingerprinted once the backend loaded it


def _plan(config: DatagenConfig) -> _Plan:
    """Every check that can fail on user input, in the order a user would fix them."""
    from speculators.datagen.backends import resolve_backend_name
    from speculators.models.verifier import load_chat_tokenizer, load_verifier_config

    _check_output_locations(config)
    backend_name, backend_note = resolve_backend_name(config)
    if backend_name == "transformers":
        resolve_device(config.device)
    verifier = load_verifier_config(config.target_model_path, "--target-model-path")
    layer_ids = resolve_layer_ids(config.layer_ids, verifier.num_hidden_layers)
    tokenizer = load_chat_tokenizer(
        config.target_model_path,
        "--target-model-path",
        "conversations cannot be rendered the way the model was trained",
    )
    check_tokenizer(tokenizer, config.target_model_path)
    raw = load_raw_data(config.train_data_path, config.cache_dir)
    if len(raw.dataset) == 0:
        raise UserInputError(
            f"--train-data-path {config.train_data_path}: the data set is empty (no "
            "conversations). Point it at a file or dataset with at least one conversation."
        )
    data = tokenize_dataset(
        raw, tokenizer, config.seq_length, config.max_samples, config.seed, config.cache_dir
    )
    if data.num_samples == 0:
        raise _empty_data_error(config, data, len(data.dataset))
    fingerprint = _fingerprint(config, data, layer_ids)
    verifier_fp = _verifier_fingerprint(config)
    check_output_dir(config, fingerprint, layer_ids, verifier_fp)
    counts = count_supervised_tokens(data)
    meta = TokenFreqMeta(
        fingerprint=fingerprint,
        target_model_path=config.target_model_path,
        train_data_path=config.train_data_path,
        vocab_size=int(verifier.vocab_size),
        num_samples=data.num_samples,
        num_tokens=sum(counts.values()),
        tokenizer=verifier_fp.tokenizer if verifier_fp else None,
    )
    check_token_freq_path(config, meta)
    regenerated_from, regen_note = _regeneration(config)
    notes = [raw.note, regen_note, backend_note, _tp_note(config, backend_name)]
    return _Plan(
        verifier,
        layer_ids,
        data,
        fingerprint,
        counts,
        meta,
        backend_name,
        _notes(notes, layer_ids, verifier.num_hidden_layers),
        verifier_fp,
        regenerated_from,
    )


def _remove_stale_temps(config: DatagenConfig) -> None:
    """Temp files of datagen's own outputs that a killed run left behind."""

    def ours(name: str) -> bool:
        return name == DATA_CONFIG_FILE or sample_index(Path(name)) is not None

    remove_stale_temps(config.output_dir, ours)
    freq = config.token_freq_path
    remove_stale_temps(freq.parent, lambda name: name == freq.name)


def run_datagen(
    config: DatagenConfig, on_progress: ProgressFn | None = None, command: str | None = None
) -> DatagenResult | None:
    """Generate (or finish generating) the training data `config` describes. Under torchrun
    with several processes (`--nproc-per-node`), each computes its share (datagen.shards) and
    the first returns the result of the whole run; the others return None."""
    shard = join(config.device)
    try:
        return _run(config, shard, on_progress if shard.first else None, command)
    except Exception as e:
        if shard.world > 1 and peer_failed(e):
            # The process that failed has printed why; no traceback from this one.
            print(f"rank {shard.rank}: stopped, another process failed.", file=sys.stderr)
            raise SystemExit(1) from None
        raise
    finally:
        shard.close()


@dataclass
class _ShardStats:
    """What one process did; summed over the processes for the result."""

    generated: int = 0
    bytes_written: int = 0
    tokens: int = 0
    seconds: float = 0.0


def _run(
    config: DatagenConfig, shard: Shard, on_progress: ProgressFn | None, command: str | None
) -> DatagenResult | None:
    from speculators.datagen.backends import load_backend

    start = time.perf_counter()
    # The first process checks everything and tokenizes (into the datasets cache the others
    # then read; an --overwrite clears the dir once) before the others start.
    if not shard.first:
        shard.wait_for_all()
    plan = _plan(config)  # nothing is written before this returns
    if shard.first:
        shard.wait_for_all()
    if shard.world > 1 and plan.backend_name == "vllm":
        raise UserInputError(VLLM_PROCESSES)
    data = plan.data
    todo = [i for i in range(data.num_samples) if not sample_path(config.output_dir, i).is_file()]
    all_batches = length_sorted_batches(
        data.lengths(), list(range(data.num_samples)), config.batch_size
    )
    batches = [b for k, b in enumerate(all_batches) if shard.owns(k)]
    ours = {i for b in batches for i in b}
    mine = [i for i in todo if i in ours]
    if shard.first:
        _remove_stale_temps(config)
    stats = _ShardStats()
    backend = load_backend(config, plan.layer_ids) if mine or (todo and shard.first) else None
    try:
        if backend is not None and shard.first:
            if plan.verifier_fingerprint is None:  # the backend has downloaded it by now
                plan.verifier_fingerprint = _verifier_fingerprint(config)
                fp = plan.verifier_fingerprint
                plan.meta.tokenizer = fp.tokenizer if fp else None
            config.output_dir.mkdir(parents=True, exist_ok=True)
            write_data_config(
                config,
                plan.verifier,
                backend,
                plan.layer_ids,
                data.num_samples,
                plan.fingerprint,
                command,
                plan.verifier_fingerprint,
                plan.regenerated_from,
            )
        if shard.first:  # a complete dir (every sample present) needs no verifier
            save_token_freq(config.token_freq_path, plan.counts, plan.meta)
        shard.wait_for_all()  # no sample is written before data_config.json
        if backend is not None and mine:
            if on_progress is not None:
                on_progress(len(ours) - len(mine), len(ours), 0)
            writer = SampleWriter(hidden_dtype=config.hidden_states_dtype)
            generated = generate_samples(
                backend, data, mine, config.output_dir, config.batch_size, on_progress,
                writer=writer, batches=batches,
            )  # fmt: skip
            stats = _ShardStats(
                len(mine), generated.bytes_written, generated.num_tokens, generated.seconds
            )
    finally:
        if backend is not None:
            backend.close()
    every = shard.gather(stats)
    if not shard.first:
        return None
    return DatagenResult(
        output_dir=config.output_dir,
        data_config_path=config.output_dir / DATA_CONFIG_FILE,
        token_freq_path=config.token_freq_path,
        layer_ids=plan.layer_ids,
        backend=plan.backend_name,
        num_samples=data.num_samples,
        num_generated=sum(s.generated for s in every),
        num_tokens=sum(data.lengths()),
        num_supervised_tokens=plan.meta.num_tokens,
        num_skipped_no_assistant=data.num_no_assistant,
        num_skipped_template_error=data.num_template_errors,
        num_skipped_truncated=data.num_no_supervised,
        num_generated_tokens=sum(s.tokens for s in every),
        bytes_written=sum(s.bytes_written for s in every),
        seconds=time.perf_counter() - start,
        generation_seconds=max(s.seconds for s in every),  # the processes run side by side
        notes=plan.notes + _processes_note(shard),
    )


def _processes_note(shard: Shard) -> list[str]:
    if shard.world == 1:
        return []
    return [f"{shard.world} processes, each computing one batch in {shard.world}"]
