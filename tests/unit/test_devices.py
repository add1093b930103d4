"""The one `--device` resolution that datagen, train and eval share."""

from __future__ import annotations

import pytest
import torch

from speculators.devices import resolve_device
from speculators.errors import UserInputError


@pytest.mark.parametrize("gpu", [False, True])
def test_auto_picks_cuda_only_when_a_gpu_is_visible(monkeypatch, gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert resolve_device("auto") == torch.device("cuda" if gpu else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_names_the_flag_and_the_way_out(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserInputError, match=r"--device cuda.*--device cpu or auto"):
        resolve_device("cuda")
