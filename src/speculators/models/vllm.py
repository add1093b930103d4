"""Starting vLLM on a verifier: the supported versions, and one clean message for every way that
can fail (vllm missing or too old, no GPU, the engine refusing the model or running out of
memory). Datagen's vllm backend and `eval --engine vllm` both start their engines here."""

from __future__ import annotations

import gc
import importlib.util
import os
import warnings
from typing import Any

from speculators.errors import UserInputError, describe

INSTALL_HINT = "pip install 'speculators[datagen]'"
# Read and run: 0.26 (the GPU machine's). Read: 0.33. Older releases lack the supported
# hidden-state export (`extract_hidden_states`) the datagen backend is built on.
MIN_VERSION = (0, 26)
TESTED_BELOW = (0, 34)
SUPPORTED = ">=0.26,<0.34"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_backend(requested: str) -> tuple[str, str | None]:
    """`--backend auto|transformers|vllm` -> the backend to use and, when `auto` fell back to
    transformers, a note saying why. `auto` is vllm when vllm is importable and a GPU present."""
    if requested == "vllm":
        if not vllm_available():
            raise UserInputError(
                f"--backend vllm: vllm is not installed in this environment. Install it with "
                f"{INSTALL_HINT} (needs a CUDA GPU), or use --backend transformers."
            )
        return "vllm", None
    if requested == "auto" and vllm_available() and _gpu_available():
        return "vllm", None
    if requested == "auto":
        why = "vllm is not installed" if not vllm_available() else "no GPU is present"
        return "transformers", f"--backend auto: using transformers ({why})."
    return "transformers", None


def parse_version(version: str) -> tuple[int, int] | None:
    """(major, minor) of a vllm.__version__ such as '0.26.0+cu130'; None if unreadable."""
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def import_vllm(flag: str) -> Any:
    """The vllm module, or a UserInputError naming `flag`, the install line and the version."""
    try:
        import vllm
    except ImportError as e:
        missing = getattr(e, "name", None)
        if missing and missing.split(".")[0] != "vllm":  # vllm is there but broken
            raise UserInputError(
                f"{flag}: vllm is installed but cannot be imported ({describe(e)}). Reinstall it "
                f"with {INSTALL_HINT} in an environment whose torch is the one vllm pins."
            ) from None
        raise UserInputError(
            f"{flag}: vllm is not installed. Install it with {INSTALL_HINT} (vllm{SUPPORTED}, "
            "needs a CUDA GPU)."
        ) from None
    version = str(getattr(vllm, "__version__", "unknown"))
    parsed = parse_version(version)
    if parsed is None or parsed < MIN_VERSION:
        raise UserInputError(
            f"{flag}: vllm {version} is too old; speculators needs vllm{SUPPORTED} (its "
            f"`extract_hidden_states` speculative method). Upgrade with {INSTALL_HINT}."
        )
    if parsed >= TESTED_BELOW:
        warnings.warn(
            f"vllm {version} is newer than the tested range {SUPPORTED}; every capture is still "
            "checked against the tokens sent, so an incompatibility fails loudly.",
            stacklevel=2,
        )
    return vllm


def require_gpu(flag: str, alternative: str) -> None:
    """vLLM runs on CUDA GPUs only. Asked through NVML, not torch.cuda: a CUDA context in this
    process would make vLLM spawn its workers instead of forking them."""
    from vllm.platforms import current_platform

    if not current_platform.is_cuda():
        raise UserInputError(f"{flag} needs a CUDA GPU and none is visible here; {alternative}.")


def start_engine(vllm: Any, kwargs: dict[str, Any], flag: str, model: str) -> Any:
    """`vllm.LLM(**kwargs)`, with vLLM's start-up failures turned into one message."""
    # Forked engine processes cannot use CUDA once this process has touched it (a device
    # count is enough, and torch.cuda.is_initialized() does not see that): always spawn.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    try:
        return vllm.LLM(**kwargs)
    except Exception as e:  # vLLM raises many types (ValueError, RuntimeError, its own)
        raise engine_error(e, vllm, flag, f"could not start on {model}") from None


def engine_error(error: BaseException, vllm: Any, flag: str, what: str) -> UserInputError:
    """The message for a vLLM failure: its version, its own error, and the likely fix."""
    text = f"{describe(error)}"
    lowered = str(error).lower()
    if "out of memory" in lowered or "memory" in lowered and "kv cache" in lowered:
        fix = (
            "Lower --batch-size or --seq-length, or raise --gpu-memory-utilization if other "
            "processes leave room"
        )
    else:
        fix = "If the model is not one vLLM supports, use the transformers engine instead"
    return UserInputError(
        f"{flag}: vLLM {getattr(vllm, '__version__', '?')} {what} ({text}). {fix}."
    )


def shutdown(llm: Any) -> None:
    """Stop the engine's processes now rather than at interpreter exit (vLLM can hang there)."""
    if llm is None:
        return
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine_core is not None:
        engine_core.shutdown()
    del llm
    gc.collect()
