"""The training loop: optimizer and schedule, one step, validation, checkpoints, resume.

Nothing here knows about process groups: train/run.py passes the model (FSDP-wrapped with
several processes) and a `Parallel` (train/distributed.py) that sums metrics across ranks and
gathers/scatters full state dicts; the default is a process alone.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speculators.artifacts import checkpoint as ckpt
from speculators.artifacts.checkpoint_runs import LEGACY_RUN, retire_other_runs
from speculators.artifacts.samples import dequantize_fp8_rows
from speculators.errors import UserInputError, compile_errors, compile_failure
from speculators.models.eagle3 import Eagle3Draft
from speculators.train.attention import AttentionImpl
from speculators.train.compiled import compile_draft
from speculators.train.compute_copies import ComputeCopies
from speculators.train.distributed import Parallel, reduce_metrics
from speculators.train.divergence import check_finite, diverged
from speculators.train.loss import ArgmaxOver, TTTMetrics
from speculators.train.prefetch import prefetch_to_device
from speculators.train.staged import Staged
from speculators.train.step import VerifierTargets, ttt_forward


def lr_lambda(total_steps: int, warmup_steps: int, decay: str, floor: float = 0.1) -> Callable:
    """LR multiplier: linear warmup to 1, then cosine/linear decay to `floor` (or constant)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
        return floor + (1 - floor) * shape

    return factor


@dataclass
class TrainerOptions:
    epochs: int
    lr: float
    weight_decay: float
    max_grad_norm: float
    ttt_steps: int
    ttt_step_loss_decay: float
    total_steps: int
    warmup_steps: int
    lr_decay: str
    attention: AttentionImpl
    seed: int
    fused_adamw: bool = True  # on CUDA; FSDP's DTensors (several processes) take foreach
    compile: bool = False  # torch.compile the draft's layers and loss (GPU runs)
    metrics_every: int = 1  # accuracy metrics on every N-th step (the others: loss only)
    accuracy_over: ArgmaxOver = "full"  # the verifier's vocab accuracy is scored in (SPEC §3)


@dataclass
class QueuedStep:
    """An optimizer step given to the GPU; its numbers are still on their way."""

    step: int  # the global step count once it is done
    rows: int  # micro-batches
    scalars: Staged  # its loss (summed over micro-batches) and gradient norm
    metrics: TTTMetrics
    lr: float  # the learning rate it ran with
    started: float  # perf_counter() when queueing it began
    queued: float  # perf_counter() when it was queued (on a CPU: done, as ops run when called)
    done: float = 0.0  # perf_counter() when it was seen done (set by `finish_step`)


@dataclass
class Trainer:
    """Owns the model, optimizer and schedule; `train` runs epochs given a loader factory."""

    model: Eagle3Draft
    targets: VerifierTargets
    options: TrainerOptions
    device: torch.device
    save_path: Path
    config_json: dict[str, Any]
    parallel: Parallel = field(default_factory=Parallel)
    on_step: Callable[[int, dict[str, float]], None] | None = None
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    epoch: int = 0  # the next epoch to run
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str = LEGACY_RUN  # the run the checkpoints belong to (artifacts.checkpoint_runs)
    record: dict[str, Any] = field(default_factory=dict)  # settings saved with each checkpoint

    def __post_init__(self) -> None:
        o = self.options
        params = [p for p in self.model.parameters() if p.requires_grad]
        fused = self.device.type == "cuda" and o.fused_adamw
        self.optimizer = torch.optim.AdamW(
            params, lr=o.lr, weight_decay=o.weight_decay, betas=(0.9, 0.95), fused=fused
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(o.total_steps, o.warmup_steps, o.lr_decay)
        )
        if o.compile:
            compile_draft(self.model)
        # One GPU: bf16 copies of the parameters once per micro-batch (several GPUs: FSDP's
        # mixed precision does the same).
        self._copies: ComputeCopies | None = None
        if self.device.type == "cuda" and self.parallel.world_size == 1:
            self._copies = ComputeCopies(self.model, torch.bfloat16)

    @property
    def is_main(self) -> bool:
        return self.parallel.is_main

    def _autocast(self) -> Any:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "error" in batch:
            raise UserInputError(batch["error"])
        out = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        # bf16 matmuls are far slower than fp32 on CPUs
        dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        if "last_scale" in out:  # fp8 rows (train.data.PackedRows): converted here, on device
            aux, aux_scale = out["aux_hidden_states"], out.pop("aux_scale")
            out["aux_hidden_states"] = dequantize_fp8_rows(aux, aux_scale, dtype)
            last, last_scale = out["last_hidden_state"], out.pop("last_scale")
            out["last_hidden_state"] = dequantize_fp8_rows(last, last_scale[..., None], dtype)
        elif self.device.type == "cpu":
            for k in ("aux_hidden_states", "last_hidden_state"):
                out[k] = out[k].float()
        return out

    def _forward(
        self, batch: dict[str, Any], accuracy: bool = True
    ) -> tuple[torch.Tensor, TTTMetrics]:
        """The TTT forward of one batch (loss, and metrics unless `accuracy` is False) under
        this run's autocast."""
        o = self.options
        with self._autocast():
            return ttt_forward(
                self.model,
                self._to_device(batch),
                self.targets,
                o.ttt_steps,
                o.ttt_step_loss_decay,
                o.attention,
                o.compile,
                o.accuracy_over if accuracy else None,
            )

    def train_step(self, batch: dict[str, Any] | list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step on one batch, or on a list of micro-batches (gradients of their
        mean loss); returns this step's metrics, summed over all ranks (waits for the GPU)."""
        return self.finish_step(self.queue_step(batch))

    def queue_step(self, batch: dict[str, Any] | list[dict[str, Any]]) -> QueuedStep:
        """Give the GPU one optimizer step (see `train_step`) without waiting for it: its
        numbers are read by `finish_step`, which `train` calls once the next step is queued,
        so that the GPU never idles while the host reads a step's loss."""
        start = time.perf_counter()
        o = self.options
        self.model.train()
        micro = batch if isinstance(batch, list) else [batch]
        # The full-vocab verifier argmax behind accuracy costs products over the whole lm_head:
        # measured on a fixed share of steps (the first of each run of metrics_every).
        accuracy = self.global_step % o.metrics_every == 0
        self.optimizer.zero_grad(set_to_none=True)
        # Nothing here reads a number off the GPU, so the host queues work ahead of it.
        metrics, loss_sum = TTTMetrics(o.ttt_steps), torch.zeros((), device=self.device)
        for one in micro:
            try:
                with self._copies or contextlib.nullcontext():
                    loss, m = self._forward(one, accuracy)
                    # Each row weighs the same; ranks are averaged by FSDP's gradient reduction.
                    (loss / len(micro)).backward()
            except compile_errors() as e:
                if not o.compile:
                    raise
                raise compile_failure(e, "the draft", "about 1.3x slower") from None
            if self._copies:
                self._copies.collect_grads()
            metrics.merge(m)
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], o.max_grad_norm
        )
        self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor (its reduction is queued)
            grad_norm = grad_norm.full_tensor()
        metrics.stage()
        scalars = Staged(torch.stack([loss_sum.float(), grad_norm.float()]))
        lr = float(self.scheduler.get_last_lr()[0])
        return QueuedStep(
            self.global_step, len(micro), scalars, metrics, lr, start, time.perf_counter()
        )

    def finish_step(
        self, queued: QueuedStep, previous: QueuedStep | None = None
    ) -> dict[str, float]:
        """The metrics of a queued step, once the GPU has done it (summed over all ranks).
        `train/step_s`: the time from when `previous` (the step before it; default: none) was
        seen done, or from its own start, to when it is: waits for the loader included."""
        loss_sum, norm = queued.scalars.tolist()
        # A GPU step is done when its numbers arrive; a CPU step was done once queued.
        queued.done = queued.queued if self.device.type == "cpu" else time.perf_counter()
        # The loss and grad norm read here are the same on every rank.
        total_loss, rows = self.parallel.sum([loss_sum, float(queued.rows)])
        if not (math.isfinite(total_loss) and math.isfinite(norm)):
            what = f"the loss is {total_loss / rows:g} (gradient norm {norm:g})"
            raise diverged(self, what, queued.step)
        metrics = reduce_metrics(queued.metrics, self.parallel)
        out = metrics.summary("train/")
        out["train/loss"] = total_loss / rows
        out["train/grad_norm"] = norm
        out["train/lr"] = queued.lr
        out["train/step_s"] = queued.done - (previous.done if previous else queued.started)
        out["train/tokens_per_s"] = metrics.num_tokens / out["train/step_s"]
        if self.device.type == "cuda":
            out["train/peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self._last_metrics = metrics
        return out

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, Any]]) -> TTTMetrics:
        """Metrics of the current weights over `batches` (no gradient, no update)."""
        o = self.options
        self.model.eval()
        total = TTTMetrics(o.ttt_steps)
        for batch in batches:
            _, metrics = self._forward(batch)
            total.merge(metrics)
        return reduce_metrics(total, self.parallel)

    def save(self, epoch: int, summary: dict[str, float]) -> Path:
        """Write `save_path/{epoch}` (a complete checkpoint or nothing). Every rank calls this
        (the full state is gathered from all); only the main rank writes. Checkpoints of other
        runs are deleted once this run has one (artifacts.checkpoint_runs)."""
        check_finite(self, summary)
        state = self.parallel.model_state(self.model)
        optimizer_state = self.parallel.optimizer_state(self.model, self.optimizer)
        path = self.save_path / str(epoch)
        if self.is_main:
            self._write(path, epoch, summary, state, optimizer_state)
            retire_other_runs(self.save_path, self.run_id)
        self.parallel.barrier()  # nobody moves on (or resumes) before the files exist
        return path

    def _write(
        self,
        path: Path,
        epoch: int,
        summary: dict[str, float],
        state: dict[str, torch.Tensor],
        optimizer_state: dict[str, Any],
    ) -> Path:
        return ckpt.save_checkpoint(
            path,
            model_state=state,
            config=self.config_json,
            optimizer_state=optimizer_state,
            scheduler_state=self.scheduler.state_dict(),
            trainer_state={"master_weights": {k: v.detach().cpu() for k, v in state.items()}},
            training_state={
                "epoch": epoch,
                "global_step": self.global_step,
                "complete": True,
                "run_id": self.run_id,
                "lr": float(self.scheduler.get_last_lr()[0]),
                "metrics": summary,
                **self.record,
            },
        )

    def resume(self, checkpoint_dir: Path) -> None:
        """Continue exactly after the checkpoint's epoch: fp32 weights, optimizer, schedule.
        A changed --lr or --epochs applies from here on (the schedule keeps its step count)."""
        state = ckpt.read_training_state(checkpoint_dir)
        files = ckpt.read_resume_state(checkpoint_dir)
        try:
            self.parallel.load_model_state(
                self.model, files[ckpt.TRAINER_STATE_FILE]["master_weights"]
            )
        except RuntimeError as e:
            raise UserInputError(
                f"checkpoint {checkpoint_dir} is of a different draft (other --num-layers, "
                f"vocab or verifier): {str(e).splitlines()[0]} Pass --no-resume-from-checkpoint "
                "to start over, or another --save-path."
            ) from None
        self.parallel.load_optimizer_state(self.model, self.optimizer, files[ckpt.OPTIMIZER_FILE])
        self.scheduler.load_state_dict(files[ckpt.SCHEDULER_FILE])
        self._apply_lr(self.options.lr)
        self.epoch, self.global_step = state["epoch"] + 1, state["global_step"]
        self.run_id = str(state.get("run_id", LEGACY_RUN))

    def _apply_lr(self, lr: float) -> None:
        """Follow this run's schedule (peak `lr`, its length from --epochs) from the current
        step on: the loaded state carries the LR it was saved with. With unchanged settings
        this recomputes the same value LambdaLR would."""
        self.scheduler.base_lrs = [lr] * len(self.scheduler.base_lrs)
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["initial_lr"], group["lr"] = lr, lr * factor
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]  # type: ignore[attr-defined]

    def steps_in_flight(
        self, batches: Iterable[dict[str, Any] | list[dict[str, Any]]]
    ) -> Iterator[tuple[int, dict[str, float]]]:
        """Train on `batches` with one step in flight: step i's numbers are read once step
        i+1 is queued, so the GPU has work while the host reads them (and while it waits for
        the loader). Yields (global step, its metrics) per step, with `train/data_wait_s`;
        `_last_metrics` holds that step's TTTMetrics meanwhile."""
        queued: tuple[QueuedStep, float] | None = None
        before: QueuedStep | None = None
        wait_start = time.perf_counter()
        for batch in batches:
            # Host time spent getting this batch: the loader (and copy) not keeping up (the
            # GPU still has the step before it to do meanwhile).
            data_wait = time.perf_counter() - wait_start
            step = self.queue_step(batch)
            if queued:
                yield self._finished(*queued, before)
                before = queued[0]
            queued = (step, data_wait)
            wait_start = time.perf_counter()
        if queued:
            yield self._finished(*queued, before)

    def _finished(
        self, queued: QueuedStep, data_wait: float, previous: QueuedStep | None
    ) -> tuple[int, dict[str, float]]:
        metrics = self.finish_step(queued, previous)
        metrics["train/data_wait_s"] = data_wait
        return queued.step, metrics

    def train(
        self,
        train_batches: Callable[[int], Iterable[dict[str, Any] | list[dict[str, Any]]]],
        val_batches: Callable[[], Iterable[dict[str, Any]] | None],
    ) -> list[dict[str, float]]:
        """Run the remaining epochs; after each, validate and save. Returns epoch summaries."""
        while self.epoch < self.options.epochs:
            epoch_metrics = TTTMetrics(self.options.ttt_steps)
            start = time.perf_counter()
            batches = prefetch_to_device(train_batches(self.epoch), self.device)
            for step, step_metrics in self.steps_in_flight(batches):
                epoch_metrics.merge(self._last_metrics)
                if self.on_step:
                    self.on_step(step, step_metrics)
            summary = epoch_metrics.summary("train/")
            summary["train/tokens_per_s"] = epoch_metrics.num_tokens / (time.perf_counter() - start)
            if self.device.type == "cuda":
                summary["train/peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            val = val_batches()
            if val is not None:
                summary.update(self.evaluate(val).summary("val/"))
            summary["epoch"] = self.epoch
            self.save(self.epoch, summary)
            if self.on_epoch:
                self.on_epoch(self.epoch, summary)
            self.history.append(summary)
            self.epoch += 1
        return self.history
