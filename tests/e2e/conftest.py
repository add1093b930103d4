"""E2E fixtures shared by the stages: datagen run once on the real SmolLM2 and ShareGPT rows."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_data(smollm2_dir: Path, sharegpt_file: Path, tmp_path_factory) -> Path:
    """Datagen output dir (data_*.pt, data_config.json, token_freq.pt inside) of SmolLM2 over
    120 ShareGPT conversations at --seq-length 256 (fp32 on CPU; about a minute)."""
    from speculators.config import DatagenConfig
    from speculators.datagen.run import run_datagen

    root = tmp_path_factory.mktemp("smollm2-data")
    out = root / "data"
    run_datagen(
        DatagenConfig(
            target_model_path=str(smollm2_dir),
            train_data_path=str(sharegpt_file),
            output_dir=out,
            max_samples=120,
            seq_length=256,
            cache_dir=root / "cache",
            token_freq_path=out / "token_freq.pt",
            device="cpu",
            dtype="float32",
        )
    )
    return out
