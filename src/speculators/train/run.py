"""One training process: join the run's process group, check inputs, build the draft, resume,
train, save. Every process of `speculators train` (torchrun's workers, train/launch.py) and every
Python call runs `run_train`.

    speculators train --verifier-name-or-path ./tiny-llama --data-path ./data \
        --d2t-path ./vocab/d2t.npy --t2d-path ./vocab/t2d.npy --epochs 2 --total-seq-len 512
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speculators import __version__
from speculators.artifacts.checkpoint import speculators_config
from speculators.artifacts.checkpoint_runs import latest_checkpoint, record_train_config
from speculators.artifacts.data_config import find_data_configs
from speculators.artifacts.layer_ids import to_vllm_aux_layer_ids
from speculators.artifacts.vocab_mapping import load_vocab_mapping
from speculators.config.train import TrainConfig
from speculators.devices import resolve_device
from speculators.errors import UserInputError
from speculators.models.eagle3 import layer_config_dict
from speculators.models.fingerprint import verifier_fingerprint
from speculators.models.verifier import load_verifier_config
from speculators.peers import peer_failed
from speculators.train.build import VERIFIER_FLAG, build_model, place_model, targets_to
from speculators.train.checks import check_complete, check_layers, check_outputs, check_verifier
from speculators.train.data import DataIndex, PackedRows, index_data, make_loader
from speculators.train.distributed import Parallel, init, parallelize, teardown
from speculators.train.launch import under_torchrun, worker_config
from speculators.train.loggers import MetricLoggers
from speculators.train.packing import epoch_rows, pack, rank_rows
from speculators.train.resume import (
    choose_start,
    data_digest,
    settings_record,
    tidy_save_path,
    vocab_digest,
)
from speculators.train.trainer import Trainer, TrainerOptions


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    checkpoint: Path | None
    resumed_from: Path | None
    num_train_samples: int
    num_val_samples: int
    layer_ids: list[int]
    notes: list[str] = field(default_factory=list)


def trainer_options(
    config: TrainConfig,
    device: torch.device,
    total_steps: int,
    head_dim: int,
    fused_adamw: bool = True,
) -> TrainerOptions:
    warmup = config.warmup_steps if config.warmup_steps >= 0 else max(1, total_steps // 20)
    # Compiled flex attention needs head_dim >= 16 (real models have 64 or 128).
    flex_ok = device.type == "cuda" and head_dim >= 16
    attention = config.attention
    if attention == "auto":
        attention = "flex" if flex_ok else "dense"
    elif attention == "flex" and device.type == "cuda" and not flex_ok:
        raise UserInputError(
            f"--attention flex: the draft's head_dim is {head_dim}, but compiled flex attention "
            "needs at least 16. Use --attention dense (or auto)."
        )
    return TrainerOptions(
        epochs=config.epochs,
        lr=config.lr,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        ttt_steps=config.ttt_steps,
        ttt_step_loss_decay=config.ttt_step_loss_decay,
        total_steps=total_steps,
        warmup_steps=min(warmup, total_steps),
        lr_decay=config.lr_decay,
        attention=attention,
        seed=config.seed,
        fused_adamw=fused_adamw,
        compile=device.type == "cuda" and not config.no_compile,
        metrics_every=config.metrics_every,
    )


@dataclass
class TrainRun:
    """Everything a run needs, checked and built, before anything is written: the trainer and
    this process's share of the batches."""

    config: TrainConfig
    index: DataIndex
    layer_ids: list[int]
    trainer: Trainer
    rows_per_epoch: list[int]  # optimizer steps per epoch
    rows_per_step: int  # the global batch, in packed rows
    identity: dict[str, Any]  # what the flags point at, by content (train.resume)
    notes: list[str] = field(default_factory=list)

    def _loader(self, rows: list[list[int]], padding: set[int], seed: int) -> Iterable[Any]:
        c = self.config
        data = PackedRows(
            self.index.files, rows, c.total_seq_len, c.data_format_version, padding, self.index.fp8
        )
        return make_loader(data, c.num_workers, self.trainer.device.type == "cuda", seed)

    def train_batches(self, epoch: int) -> Iterable[dict[str, Any] | list[dict[str, Any]]]:
        """This rank's batches of `epoch`: per optimizer step one batch, or a list of
        micro-batches when each rank takes several rows per step (--rows-per-step)."""
        c, p = self.config, self.trainer.parallel
        rows = epoch_rows(self.index, c.total_seq_len, c.seed, epoch, c.packing)
        mine, padding = rank_rows(
            rows,
            self.index.lengths,
            self.rows_per_step,
            p.world_size,
            p.rank,
            c.max_steps_per_epoch,
        )
        return _grouped(
            self._loader(mine, padding, c.seed + epoch), self.rows_per_step // p.world_size
        )

    def val_batches(self) -> Iterable[dict[str, Any]] | None:
        c, p = self.config, self.trainer.parallel
        rows = pack(self.index.val, self.index.lengths, c.total_seq_len, c.packing)
        if not rows:
            return None
        mine, padding = rank_rows(rows, self.index.lengths, p.world_size, p.world_size, p.rank)
        return self._loader(mine, padding, c.seed)


def _grouped(
    batches: Iterable[dict[str, Any]], size: int
) -> Iterator[dict[str, Any] | list[dict[str, Any]]]:
    """Micro-batches of one optimizer step together; a lone batch as itself."""
    it = iter(batches)
    while group := list(itertools.islice(it, size)):
        yield group if size > 1 else group[0]


def steps_per_epoch(c: TrainConfig, index: DataIndex, rows_per_step: int) -> list[int]:
    cap = c.max_steps_per_epoch or 10**12
    rows = [len(epoch_rows(index, c.total_seq_len, c.seed, e, c.packing)) for e in range(c.epochs)]
    return [min(cap, math.ceil(n / rows_per_step)) for n in rows]


def prepare(config: TrainConfig, parallel: Parallel | None = None) -> TrainRun:
    """Check every input (UserInputError naming the flag or file) and build the trainer for this
    process of `parallel` (default: a process alone, on --device). Several processes shard the
    draft with FSDP2; one keeps it a plain module (fused AdamW on GPUs)."""
    parallel = parallel or Parallel(device=resolve_device(config.device))
    rows_per_step = config.rows_per_step or parallel.world_size
    assert rows_per_step % parallel.world_size == 0  # TrainConfig's rule (launch.worker_config)
    check_outputs(config)
    verifier = load_verifier_config(config.verifier_name_or_path, VERIFIER_FLAG)
    fingerprint = verifier_fingerprint(config.verifier_name_or_path, VERIFIER_FLAG)
    index = index_data(
        config.data_path, config.data_format_version, config.val_fraction, config.seed
    )
    data_configs = find_data_configs(config.data_path)
    layer_ids = check_layers(config, verifier, index, data_configs)
    notes = check_complete(config, index, data_configs)
    notes += check_verifier(config, fingerprint, data_configs)
    d2t, t2d = load_vocab_mapping(config.d2t_path, config.t2d_path, verifier.vocab_size)
    device = parallel.device
    model, targets = build_model(config, verifier, d2t, t2d, index.num_aux_layers)
    rows_per_epoch = steps_per_epoch(config, index, rows_per_step)
    config_json = speculators_config(
        transformer_layer_config=layer_config_dict(model.config),
        draft_vocab_size=int(d2t.shape[0]),
        target_hidden_size=verifier.hidden_size,
        vllm_aux_layer_ids=to_vllm_aux_layer_ids(layer_ids),
        verifier_name_or_path=config.verifier_name_or_path,
        verifier_architectures=list(getattr(verifier, "architectures", None) or []),
        speculative_tokens=config.ttt_steps,
        speculators_version=__version__,
        verifier_fingerprint=fingerprint.model_dump(),
    )
    head_dim = int(model.config.head_dim or 0)
    model = place_model(model, device)
    sharded = parallel.world_size > 1
    trainer = Trainer(
        parallelize(model, device) if sharded else model,
        targets_to(targets, device),
        trainer_options(config, device, sum(rows_per_epoch), head_dim, not sharded),
        device,
        config.save_path,
        config_json,
        parallel=parallel,
    )
    identity = {
        "verifier": fingerprint.model_dump(),
        "data": data_digest(config.data_path, index.files),
        "vocab": vocab_digest(d2t, t2d),
    }
    trainer.record = settings_record(config, identity)
    return TrainRun(
        config, index, layer_ids, trainer, rows_per_epoch, rows_per_step, identity, notes
    )


def run_train(config: TrainConfig, progress: Any = None) -> TrainResult | None:
    """Train per `config`, resuming unless told not to, as one process of the run: a torchrun
    worker, or, called from Python outside torchrun, a process alone (a process group of one).
    `progress`, if given, gets `start(first_epoch, epochs, steps_per_epoch)`,
    `step(global_step, metrics)` and `epoch(epoch, summary)` calls (the CLI's rich view) on the
    first process, which alone logs and returns the result (the others return None).

    A UserInputError while checking inputs is the same on every process, so only the first of
    each node reports it; one raised later (a bad sample file in this rank's rows) is reported
    by the rank that hit it."""
    parallel = init(config.device)
    try:
        try:
            run = prepare(worker_config(config) if under_torchrun() else config, parallel)
        except UserInputError:
            if parallel.local_rank != 0:
                raise SystemExit(2) from None
            raise
        try:
            result = train_prepared(run, progress)
        except UserInputError as e:
            if parallel.world_size == 1:
                raise
            raise UserInputError(f"rank {parallel.rank}: {e}") from None
        except Exception as e:
            if parallel.world_size > 1 and peer_failed(e):
                # Collateral damage: the failing rank has printed the cause; no traceback here.
                print(f"rank {parallel.rank}: stopped, another rank failed.", file=sys.stderr)
                raise SystemExit(1) from None
            raise
        return result if parallel.is_main else None
    finally:
        teardown()


def train_prepared(run: TrainRun, progress: Any = None) -> TrainResult:
    """The run after `prepare`: resume or start over, train the remaining epochs, save each."""
    config, trainer = run.config, run.trainer
    if not trainer.is_main:
        progress = None
    if trainer.is_main:
        tidy_save_path(config.save_path)
    trainer.parallel.barrier()  # nobody reads SAVE_PATH while a killed save is finished
    resumed, notes = choose_start(trainer, config, run.identity)
    notes = run.notes + notes
    if progress is not None and hasattr(progress, "note"):
        for note in notes:
            progress.note(note)
    names = config.logger_names if trainer.is_main else []
    loggers = MetricLoggers(names, config.log_dir, config.run_name, config.model_dump(mode="json"))

    def on_step(step: int, metrics: dict[str, float]) -> None:
        loggers.log(metrics, step)
        if progress:
            progress.step(step, metrics)

    def on_epoch(epoch: int, summary: dict[str, float]) -> None:
        loggers.log({f"epoch/{k}": v for k, v in summary.items()}, trainer.global_step)
        if trainer.is_main:  # beside the checkpoint just saved: the settings it was trained with
            record_train_config(config.save_path, config.model_dump(mode="json"))
        if progress:
            progress.epoch(epoch, summary)

    trainer.on_step, trainer.on_epoch = on_step, on_epoch
    if progress:
        progress.start(trainer.epoch, config.epochs, run.rows_per_epoch)
    try:
        history = trainer.train(run.train_batches, run.val_batches)
    finally:
        loggers.close()
    return TrainResult(
        history=history,
        checkpoint=latest_checkpoint(config.save_path, trainer.run_id),
        resumed_from=resumed,
        num_train_samples=len(run.index.train),
        num_val_samples=len(run.index.val),
        layer_ids=run.layer_ids,
        notes=notes,
    )
