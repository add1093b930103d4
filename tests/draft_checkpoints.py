"""Draft checkpoints for eval tests, built from a verifier dir the way training initialises them
(random layers, the verifier's embeddings and lm_head rows) and saved with the real writer.
A helper module, not a conftest: `from conftest import ...` must keep meaning tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_draft_checkpoint(
    verifier_dir: Path,
    out: Path,
    layer_ids: list[int] | None = None,
    speculative_tokens: int = 3,
    full_vocab: bool = False,
) -> Path:
    import torch
    from transformers import AutoConfig

    from speculators.artifacts.checkpoint import save_checkpoint, speculators_config
    from speculators.artifacts.layer_ids import resolve_layer_ids, to_vllm_aux_layer_ids
    from speculators.models.eagle3 import Eagle3Draft, draft_layer_config, layer_config_dict
    from speculators.models.verifier import read_verifier_head

    vconfig = AutoConfig.from_pretrained(verifier_dir)
    ids = resolve_layer_ids(layer_ids, vconfig.num_hidden_layers)
    # Draft vocab = the even target ids: exercises d2t (target = draft + d2t[draft]).
    t2d = np.zeros(vconfig.vocab_size, dtype=bool)
    t2d[:: 1 if full_vocab else 2] = True
    d2t = np.flatnonzero(t2d) - np.arange(int(t2d.sum()))
    torch.manual_seed(0)
    model = Eagle3Draft(draft_layer_config(vconfig, 1), int(t2d.sum()), len(ids) - 1)
    head = read_verifier_head(str(verifier_dir), vconfig.rms_norm_eps, "--verifier")
    model.init_from_verifier(
        head.embed_tokens_VH, head.lm_head_VH, torch.from_numpy(d2t), torch.from_numpy(t2d)
    )
    config = speculators_config(
        transformer_layer_config=layer_config_dict(model.config),
        draft_vocab_size=int(t2d.sum()),
        target_hidden_size=vconfig.hidden_size,
        vllm_aux_layer_ids=to_vllm_aux_layer_ids(ids),
        verifier_name_or_path=str(verifier_dir),
        verifier_architectures=list(vconfig.architectures or []),
        speculative_tokens=speculative_tokens,
        speculators_version="test",
    )
    return save_checkpoint(
        out, model_state=model.state_dict(), config=config, training_state={"epoch": 0}
    )
