"""`--backend auto|transformers|vllm`: which engine runs, and what the user is told."""

from __future__ import annotations

import pytest

from speculators.config import DatagenConfig
from speculators.datagen.backends import resolve_backend_name
from speculators.errors import UserInputError
from speculators.models import vllm as engine

NO_VLLM = "--backend auto: using transformers (vllm is not installed)."
NO_GPU = "--backend auto: using transformers (no GPU is present)."


def config(backend: str) -> DatagenConfig:
    return DatagenConfig(target_model_path="m", train_data_path="d", backend=backend)


@pytest.mark.parametrize(
    "has_vllm, has_gpu, backend, expected",
    [
        (False, False, "auto", ("transformers", NO_VLLM)),
        (False, True, "auto", ("transformers", NO_VLLM)),
        (True, False, "auto", ("transformers", NO_GPU)),
        (True, True, "auto", ("vllm", None)),
        (True, True, "transformers", ("transformers", None)),
        (True, False, "vllm", ("vllm", None)),
    ],
)  # fmt: skip
def test_choice(monkeypatch, has_vllm, has_gpu, backend, expected):
    monkeypatch.setattr(engine, "vllm_available", lambda: has_vllm)
    monkeypatch.setattr(engine, "_gpu_available", lambda: has_gpu)
    assert resolve_backend_name(config(backend)) == expected


def test_vllm_without_vllm_names_the_install(monkeypatch):
    monkeypatch.setattr(engine, "vllm_available", lambda: False)
    with pytest.raises(
        UserInputError, match=r"--backend vllm: .*pip install 'speculators\[datagen\]'"
    ):
        resolve_backend_name(config("vllm"))
