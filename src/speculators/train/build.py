"""The draft and the verifier's target pieces, built from a config and placed on a device."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from speculators.artifacts.vocab_mapping import draft_to_target_ids
from speculators.config.train import TrainConfig
from speculators.models.eagle3 import Eagle3Draft, draft_layer_config
from speculators.models.verifier import read_verifier_head
from speculators.train.step import VerifierTargets

VERIFIER_FLAG = "--verifier-name-or-path"


def build_model(
    config: TrainConfig, verifier: Any, d2t: np.ndarray, t2d: np.ndarray, num_aux: int
) -> tuple[Eagle3Draft, VerifierTargets]:
    head = read_verifier_head(config.verifier_name_or_path, verifier.rms_norm_eps, VERIFIER_FLAG)
    torch.manual_seed(config.seed)
    layer_config = draft_layer_config(verifier, config.num_layers)
    model = Eagle3Draft(layer_config, int(d2t.shape[0]), num_aux, verifier.hidden_size)
    t2d_t = torch.from_numpy(t2d)
    model.init_from_verifier(head.embed_tokens_VH, head.lm_head_VH, torch.from_numpy(d2t), t2d_t)
    model.lm_head.weight.requires_grad_(config.train_lm_head)
    target_ids = torch.from_numpy(draft_to_target_ids(d2t))
    targets = VerifierTargets.from_verifier(
        head.norm_H, head.lm_head_VH, head.rms_norm_eps, target_ids
    )
    return model, targets


def place_model(model: Eagle3Draft, device: torch.device) -> Eagle3Draft:
    """Move the draft to `device`. On GPUs the frozen verifier embeddings (and a frozen
    lm_head) are kept in bf16, the dtype they are used in under autocast (the same numbers,
    half the memory, no cast per step)."""
    model = model.to(device)
    if device.type == "cuda":
        model.embed_tokens.to(torch.bfloat16)
        if not model.lm_head.weight.requires_grad:
            model.lm_head.to(torch.bfloat16)
    return model


def targets_to(targets: VerifierTargets, device: torch.device) -> VerifierTargets:
    return targets.to(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
