"""Process group, FSDP2 sharding and cross-rank sums: every `speculators train` process runs in
a process group, the one torchrun set up (train/launch.py) or, for a Python caller outside
torchrun, one of this process alone. With one process the draft stays a plain module (fused
AdamW, no FSDP) and nothing is communicated: the same run as it was before process groups.

All process-group code lives here; the trainer only sees `Parallel`. torchrun's elastic agent
stops every worker as soon as one exits non-zero, so a failing rank ends the run instead of
leaving the others hanging in a collective; the finite process-group timeout is the backstop for
a rank stuck without exiting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from speculators.devices import resolve_device
from speculators.models.eagle3 import Eagle3Draft
from speculators.train.launch import under_torchrun
from speculators.train.loss import TTTMetrics

PROCESS_GROUP_TIMEOUT = timedelta(minutes=10)
# Gathered to CPU on rank 0 only: the full state never sits on every GPU at once.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True)


@dataclass
class Parallel:
    """This process's place in the run: what the trainer sums across processes, and how full
    state dicts are gathered and scattered (the same parameter-name keys for any number of
    processes, so a checkpoint of one resumes in the other)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return get_model_state_dict(model, options=_GATHER)  # type: ignore[return-value]

    def optimizer_state(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
        return get_optimizer_state_dict(model, opt, options=_GATHER)

    def load_model_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        # Every rank read the full state from the checkpoint; each keeps its own shard.
        set_model_state_dict(model, dict(state), options=_SCATTER)  # type: ignore[arg-type]

    def load_optimizer_state(
        self, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict
    ) -> None:
        params = (state.get("param_groups") or [{}])[0].get("params") or [""]
        if isinstance(params[0], int):  # written by torch's own optimizer.state_dict()
            opt.load_state_dict(state)
        else:
            set_optimizer_state_dict(model, opt, state, options=_SCATTER)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def reduce_metrics(metrics: TTTMetrics, parallel: Parallel) -> TTTMetrics:
    """Sum the metric numerators and denominators over all ranks (ratios are taken after)."""
    totals, n = metrics.totals(), metrics.num_steps
    names = list(totals)
    flat = [v for name in names for v in totals[name]] + [float(metrics.num_tokens)]
    summed = parallel.sum(flat)
    out = {name: summed[i * n : (i + 1) * n] for i, name in enumerate(names)}
    return TTTMetrics.from_totals(out, n, int(summed[-1]))


def worker_device(choice: str, local_rank: int) -> torch.device:
    """This process's device: GPU `local_rank` (of those CUDA_VISIBLE_DEVICES shows) or the
    CPU. How many processes fit on the GPUs is checked before they start (train/launch.py)."""
    device = resolve_device(choice)
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def init(choice: str, env: Mapping[str, str] | None = None) -> Parallel:
    """Join the process group torchrun set up, or make one of this process alone (a Python
    caller outside torchrun); NCCL on GPUs, gloo on CPUs."""
    env = os.environ if env is None else env
    torchrun = under_torchrun(env)
    if torchrun:
        rank, world, local_rank = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    else:
        rank, world, local_rank = 0, 1, 0
    device = worker_device(choice, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torchrun:  # a group of one, in memory: no address to agree on
        store = dist.HashStore()
        dist.init_process_group(
            backend, store=store, rank=0, world_size=1, timeout=PROCESS_GROUP_TIMEOUT
        )
    else:
        # device_id binds the communicator to this GPU (barriers need not guess it). A process
        # alone never communicates, so its NCCL communicator is never even created.
        bind = device if device.type == "cuda" and world > 1 else None
        dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT, device_id=bind)
    return Parallel(rank, world, local_rank, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: Eagle3Draft, device: torch.device) -> Eagle3Draft:
    """FSDP2 on each decoder layer and on the root (fc, norm, a trained lm_head). The frozen
    verifier embeddings (and a frozen lm_head) stay whole on every rank: they get no gradient,
    so sharding them would only add an all-gather per step. bf16 compute with fp32 gradient
    reduction on GPUs."""
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if device.type == "cuda"
        else MixedPrecisionPolicy()
    )
    # TTT runs every layer ttt_steps times per step: keeping the (small) draft's gathered
    # parameters until the backward saves ttt_steps - 1 all-gathers per layer (ZeRO-2 style).
    for layer in model.layers:
        fully_shard(layer, mp_policy=mp, reshard_after_forward=False)
    frozen: set[nn.Parameter] = {
        p  # type: ignore[misc]
        for p in (model.embed_tokens.weight, model.lm_head.weight)
        if not p.requires_grad
    }
    fully_shard(model, mp_policy=mp, reshard_after_forward=False, ignored_params=frozen)
    # TTT calls these besides forward; they must gather the root's parameters too.
    register_fsdp_forward_method(model, "fuse")
    register_fsdp_forward_method(model, "head")
    return model
