"""Draft checkpoints `save_path/{epoch}/` (SPEC §3): weights + config vLLM serves, and resume state.

A checkpoint is built in a hidden temp dir beside its final place and swapped into place when
every file is written (artifacts.atomic.replace_dir: crash-safe even when it replaces an older
`{epoch}`), so a killed run never leaves a directory named `{epoch}` that is incomplete;
`training_state.json` is written last inside it as a second completeness marker.
File names, completeness and the JSON files need no torch (the pipeline asks them without
importing it); writing and reading the tensor files import it inside. Loading a draft as a
model: `Eagle3Draft.from_checkpoint` (models/eagle3.py).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speculators.artifacts.atomic import (
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    replace_dir,
    temp_dir_beside,
)
from speculators.errors import UserInputError, WriteError

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
# fp32 master weights and RNG state: resuming from the bf16 export would not continue exactly.
# Not a .safetensors file, since vLLM loads every *.safetensors in the directory.
TRAINER_STATE_FILE = "trainer_state.pt"
TRAINING_STATE_FILE = "training_state.json"


def speculators_config(
    *,
    transformer_layer_config: dict[str, Any],
    draft_vocab_size: int,
    target_hidden_size: int,
    vllm_aux_layer_ids: list[int],
    verifier_name_or_path: str,
    verifier_architectures: list[str],
    speculative_tokens: int,
    speculators_version: str,
    verifier_fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """config.json in the speculators format that vLLM reads (`vllm serve <checkpoint dir>`).

    `eagle_aux_hidden_state_layer_ids` is in vLLM's convention (the layer a tensor enters).
    vLLM sizes the draft's `fc` from `transformer_layer_config["num_aux_hidden_states"]` and
    assumes 3 without it, so it is always written. `verifier_fingerprint`
    (artifacts.provenance) is an extra key vLLM ignores; eval checks it.
    """
    layer_config = {**transformer_layer_config, "num_aux_hidden_states": len(vllm_aux_layer_ids)}
    verifier: dict[str, Any] = {
        "name_or_path": verifier_name_or_path,
        "architectures": list(verifier_architectures),
    }
    if verifier_fingerprint is not None:
        verifier["fingerprint"] = verifier_fingerprint
    return {
        "architectures": ["Eagle3Speculator"],
        "model_type": "speculators",
        "speculators_model_type": "eagle3",
        "speculators_version": speculators_version,
        "transformer_layer_config": layer_config,
        "draft_vocab_size": draft_vocab_size,
        "target_hidden_size": target_hidden_size,
        "norm_before_residual": True,
        "eagle_aux_hidden_state_layer_ids": list(vllm_aux_layer_ids),
        "speculators_config": {
            "algorithm": "eagle3",
            "default_proposal_method": "greedy",
            "proposal_methods": [
                {
                    "proposal_type": "greedy",
                    "speculative_tokens": speculative_tokens,
                    "verifier_accept_k": 1,
                    "accept_tolerance": 0.0,
                }
            ],
            "verifier": verifier,
        },
    }


def save_checkpoint(
    checkpoint_dir: Path,
    *,
    model_state: Mapping[str, torch.Tensor],
    config: dict[str, Any],
    training_state: dict[str, Any],
    optimizer_state: dict[str, Any] | None = None,
    scheduler_state: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint to `checkpoint_dir`, replacing any older one there.

    `model_state` is saved as bf16 safetensors (floating tensors; d2t/t2d keep their dtype),
    as vLLM loads it (`served_weights`).
    """
    from safetensors.torch import save

    tmp = temp_dir_beside(checkpoint_dir)
    try:
        # Serialized here and written by atomic_write, so a full disk is one clear message.
        data = save(served_weights(model_state, config), metadata={"format": "pt"})
        atomic_write(tmp / WEIGHTS_FILE, lambda f: f.write(data))
        atomic_write_json(tmp / CONFIG_FILE, config)
        for name, state in (
            (OPTIMIZER_FILE, optimizer_state),
            (SCHEDULER_FILE, scheduler_state),
            (TRAINER_STATE_FILE, trainer_state),
        ):
            if state is not None:
                atomic_torch_save(tmp / name, state)
        atomic_write_json(tmp / TRAINING_STATE_FILE, training_state)
        replace_dir(tmp, checkpoint_dir)
    except WriteError as e:  # name the checkpoint, not the temp dir it was being built in
        raise WriteError(checkpoint_dir, e.error) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return checkpoint_dir


def full_vocab(config: Mapping[str, Any]) -> bool:
    """Whether the draft proposes over the verifier's whole vocabulary (no d2t/t2d needed)."""
    return bool(config["draft_vocab_size"] == config["transformer_layer_config"]["vocab_size"])


def served_weights(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict:
    """model.safetensors as vLLM loads it: bf16 weights; d2t and t2d only when the draft vocab
    is a subset (vLLM >= 0.33 has no d2t parameter for a full-vocab draft and refuses one)."""
    import torch

    skip = {"d2t", "t2d"} if full_vocab(config) else set()
    return {
        name: (t.to(torch.bfloat16) if t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in state.items()
        if name not in skip
    }


def is_complete_checkpoint(path: Path) -> bool:
    return (
        path.is_dir()
        and (path / TRAINING_STATE_FILE).is_file()
        and (path / WEIGHTS_FILE).is_file()
        and (path / CONFIG_FILE).is_file()
    )


def find_latest_complete_checkpoint(save_path: Path) -> Path | None:
    """The complete `save_path/{epoch}` with the highest epoch, or None."""
    if not save_path.is_dir():
        return None
    epochs = [p for p in save_path.iterdir() if p.name.isdigit() and is_complete_checkpoint(p)]
    return max(epochs, key=lambda p: int(p.name)) if epochs else None


def read_training_state(checkpoint_dir: Path) -> dict[str, Any]:
    path = checkpoint_dir / TRAINING_STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        raise UserInputError(
            f"checkpoint {checkpoint_dir} is damaged: {path.name} is unreadable or not a "
            "training state. Delete that directory to resume from the epoch before it, or pass "
            "--no-resume-from-checkpoint to start over."
        )
    return state


def read_resume_state(checkpoint_dir: Path) -> dict[str, Any]:
    """The files a resume reads beside the weights (trainer state, optimizer, scheduler), by
    name; a missing or damaged one is a UserInputError naming the checkpoint and the way out."""
    files = (TRAINER_STATE_FILE, OPTIMIZER_FILE, SCHEDULER_FILE)
    missing = [name for name in files if not (checkpoint_dir / name).is_file()]
    if missing:
        raise UserInputError(
            f"checkpoint {checkpoint_dir} has no {' or '.join(missing)}, so training cannot "
            "continue from it (its weights still serve in vLLM). Pass "
            "--no-resume-from-checkpoint to start over, or another --save-path."
        )
    import torch

    out = {}
    for name in files:
        try:
            out[name] = torch.load(checkpoint_dir / name, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a damaged file
            raise UserInputError(
                f"checkpoint {checkpoint_dir} is damaged: {name} is unreadable "
                f"({e.__class__.__name__}). Delete that directory to resume from the epoch "
                "before it, or pass --no-resume-from-checkpoint to start over."
            ) from None
    return out


def load_draft_config(checkpoint_dir: Path) -> dict[str, Any]:
    """config.json of a draft checkpoint; a missing or foreign file is a UserInputError."""
    path = Path(checkpoint_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserInputError(
            f"{path}: cannot read the draft's config ({e.__class__.__name__}). Pass a checkpoint "
            "directory written by `speculators train` (e.g. ./checkpoints/9)."
        ) from None
    if config.get("speculators_model_type") != "eagle3" or "transformer_layer_config" not in config:
        raise UserInputError(
            f"{path} is not an EAGLE-3 speculators config (speculators_model_type "
            f"{config.get('speculators_model_type')!r}). Pass a `speculators train` checkpoint."
        )
    return config


def read_weights(checkpoint_dir: Path, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """model.safetensors as `served_weights` wrote it, in fp32, with the identity d2t/t2d of a
    full-vocab draft restored; a damaged file is a UserInputError naming it."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(checkpoint_dir) / WEIGHTS_FILE
    try:
        state = load_file(str(path))
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise UserInputError(
            f"{path}: cannot read the draft weights ({e.__class__.__name__}: {e}). The "
            "file is damaged (e.g. a partial copy): copy it again, or use another checkpoint."
        ) from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if full_vocab(config):  # the identity mapping is not stored (served_weights)
        state.setdefault("d2t", torch.zeros(config["draft_vocab_size"], dtype=torch.long))
        state.setdefault("t2d", torch.ones(config["draft_vocab_size"], dtype=torch.bool))
    return state
