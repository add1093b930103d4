"""datagen.shards: which process is which, and which GPU each one takes."""

from __future__ import annotations

import pytest

from speculators.datagen import shards

WORKER = {"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}


@pytest.fixture
def calls(monkeypatch):
    """set_device and init_process_group calls, on a machine that claims GPUs."""
    seen: dict[str, list] = {"set_device": [], "init": []}
    monkeypatch.setattr(shards.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(shards.torch.cuda, "set_device", seen["set_device"].append)
    monkeypatch.setattr(shards.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(shards.dist, "init_process_group", lambda *a, **k: seen["init"].append(a))
    return seen


def test_each_process_takes_the_gpu_of_its_local_rank(calls):
    shard = shards.join("auto", WORKER)
    assert (shard.rank, shard.world, shard.local_rank, shard.first) == (3, 4, 1, False)
    assert calls["set_device"] == [1] and calls["init"] == [("gloo",)]
    assert [k for k in range(9) if shard.owns(k)] == [3, 7]


def test_cpu_runs_and_single_processes_take_no_gpu(calls):
    shards.join("cpu", WORKER)
    assert calls["set_device"] == []
    assert shards.join("auto", {}) == shards.Shard()  # outside torchrun: 1 of 1, no group
    one = shards.join("auto", WORKER | {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    assert one.world == 1 and calls["set_device"] == [] and len(calls["init"]) == 1
