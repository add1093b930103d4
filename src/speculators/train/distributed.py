"""Process group, FSDP2 sharding and cross-rank sums for `speculators train` under torchrun.

All process-group code lives here; the trainer only sees the `Distributed` object (the
`Parallel` protocol of train/parallel.py). torchrun's elastic agent stops every worker as soon as
one exits non-zero, so a failing rank ends the run instead of leaving the others hanging in a
collective; the finite process-group timeout is the backstop for a rank stuck without exiting.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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

from speculators.config.train import TrainConfig
from speculators.errors import UserInputError
from speculators.models.eagle3 import Eagle3Draft

PROCESS_GROUP_TIMEOUT = timedelta(minutes=10)
# Gathered to CPU on rank 0 only: the full state never sits on every GPU at once.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True)


@dataclass
class Distributed:
    """This worker's place in the run; implements the trainer's `Parallel` protocol."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
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
        set_optimizer_state_dict(model, opt, state, options=_SCATTER)

    def barrier(self) -> None:
        dist.barrier()


def worker_device(choice: str, local_rank: int) -> torch.device:
    """This worker's device: GPU `local_rank` (of those CUDA_VISIBLE_DEVICES shows) or the CPU."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserInputError(
            f"--nproc-per-node: worker {local_rank} has no GPU of its own ({count} visible"
            f"{', per CUDA_VISIBLE_DEVICES' if 'CUDA_VISIBLE_DEVICES' in os.environ else ''}). "
            "Use at most one process per GPU, or --device cpu."
        )
    return torch.device("cuda", local_rank)


def init(choice: str, env: Mapping[str, str] | None = None) -> Distributed:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPUs)."""
    env = os.environ if env is None else env
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", "0"))
    device = worker_device(choice, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if device.type == "cuda":
        # device_id binds the communicator to this GPU (barriers need not guess it).
        dist.init_process_group("nccl", timeout=PROCESS_GROUP_TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=PROCESS_GROUP_TIMEOUT)
    return Distributed(rank, world, local_rank, device)


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


def _peer_failed(e: Exception) -> bool:
    """A collective failed because another worker exited (gloo: closed connection; NCCL:
    a DistError from the watchdog)."""
    text = str(e)
    return isinstance(e, dist.DistError) or any(
        m in text
        for m in ("Connection closed by peer", "Connection reset by peer", "remote worker")
    )


def run_worker(config: TrainConfig, progress: Any = None) -> Any:
    """One torchrun worker: join the group, check inputs, train, leave. A UserInputError while
    checking inputs is the same on every rank, so only the first rank of each node reports it;
    one raised later (a bad sample file in this rank's rows) is reported by the rank that hit it.
    """
    from speculators.train.run import prepare, train_prepared

    parallel = init(config.device)
    try:
        try:
            run = prepare(
                config, parallel, parallel.device, lambda m: parallelize(m, parallel.device)
            )
        except UserInputError:
            if parallel.local_rank != 0:
                raise SystemExit(2) from None
            raise
        try:
            result = train_prepared(run, progress if parallel.is_main else None)
        except UserInputError as e:
            prefix = f"rank {parallel.rank}: " if parallel.world_size > 1 else ""
            raise UserInputError(prefix + str(e)) from None
        except Exception as e:
            if parallel.world_size > 1 and _peer_failed(e):
                # Collateral damage: the failing rank has printed the cause; no traceback here.
                print(f"rank {parallel.rank}: stopped, another rank failed.", file=sys.stderr)
                raise SystemExit(1) from None
            raise
        return result if parallel.is_main else None
    finally:
        teardown()
