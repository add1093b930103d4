"""Datagen over several processes (`--nproc-per-node N`, torchrun): which batches are whose, and
the few moments the processes wait for each other.

Every process builds the same list of batches (generate.length_sorted_batches over every
sample) and computes batch k when k % world == rank: each sample is computed in the same batch,
with the same padding, as in a one-process run, so the files are byte-identical whatever the
process count, and a rerun with another count resumes the same set. The processes share one
--output-dir (on a shared file system across nodes); only rank 0 writes data_config.json and
the token counts (counted from the tokenized data, so there is nothing to merge).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from speculators.launcher import under_torchrun

# Rank 0 tokenizes the whole data set while the others wait, and the last process may finish its
# share long after the first: the waits are long by design.
WAIT = timedelta(hours=24)


@dataclass(frozen=True)
class Shard:
    """This process's part of a datagen run: rank of world (1 of 1 outside torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def first(self) -> bool:
        return self.rank == 0

    def owns(self, batch_index: int) -> bool:
        return batch_index % self.world == self.rank

    def wait_for_all(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """`value` of every process, in rank order."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def join(device: str, env: Mapping[str, str] | None = None) -> Shard:
    """This process's shard: from torchrun's environment, joined to the others over gloo (the
    processes only exchange a few small objects, on CPU or GPU machines alike). Unless `device`
    (`--device`) is cpu, GPU `local_rank` (of those CUDA_VISIBLE_DEVICES shows) becomes this
    process's GPU, the one the transformers backend then loads the verifier on."""
    env = os.environ if env is None else env
    if not under_torchrun(env):
        return Shard()
    shard = Shard(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))
    if shard.world > 1 and device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(shard.local_rank)
    if shard.world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=WAIT)
    return shard
