"""Reading a verifier: its config, and single tensors from its safetensors without loading it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from speculators.errors import UserInputError, describe


def load_chat_tokenizer(name_or_path: str, flag: str, chat_template_for: str) -> Any:
    """The verifier's tokenizer, which must have a chat template (`chat_template_for`: what the
    command needs it for, said in the error when it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise UserInputError(
            f"{flag} {name_or_path}: cannot load its tokenizer ({describe(e)})."
        ) from None
    if not getattr(tokenizer, "chat_template", None):
        raise UserInputError(
            f"{flag} {name_or_path}: the tokenizer has no chat template, so {chat_template_for}. "
            "Use an instruct/chat model, or add a `chat_template` to its tokenizer_config.json "
            "(or chat_template.jinja)."
        )
    return tokenizer


def load_verifier_config(name_or_path: str, flag: str) -> Any:
    """The verifier's text config (a transformers PretrainedConfig).

    `name_or_path` is a local model dir or a hub name already in the local cache. Multimodal
    configs are reduced to their text part, which is what EAGLE-3 drafts against.
    """
    from transformers import AutoConfig

    path = Path(name_or_path)
    looks_local = path.is_absolute() or name_or_path.startswith(".") or path.exists()
    if looks_local and not (path / "config.json").is_file():
        raise UserInputError(
            f"{flag} {name_or_path}: no config.json there. Pass a Hugging Face model directory "
            "(with config.json and weights) or a hub name that is in the local cache."
        )
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise UserInputError(
            f"{flag} {name_or_path}: cannot read the model config ({describe(e)}). "
            "Pass a local model directory or a hub "
            "name that is in the local cache."
        ) from None
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def resolve_model_dir(name_or_path: str, flag: str) -> Path:
    """A local model dir, or the local cache snapshot of a hub name (never downloads)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as e:  # the hub client raises many types for "not cached"
        raise UserInputError(
            f"{flag} {name_or_path}: not a local directory and not in the local Hugging Face "
            f"cache ({e.__class__.__name__}). Download the model first or pass its directory."
        ) from None


def safetensors_index(model_dir: Path, flag: str) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (sharded index or single files)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserInputError(
            f"{flag} {model_dir}: no *.safetensors weights found. The trainer reads the "
            "verifier's embeddings, final norm and lm_head from safetensors; convert the "
            "checkpoint with `save_pretrained(..., safe_serialization=True)`."
        )
    out: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            out.update(dict.fromkeys(f.keys(), file))
    return out


@dataclass
class VerifierHead:
    """The verifier tensors the draft needs: embeddings, final norm and lm_head."""

    embed_tokens_VH: torch.Tensor
    norm_H: torch.Tensor
    lm_head_VH: torch.Tensor
    rms_norm_eps: float


def _pick(names: list[str]) -> str | None:
    # Multimodal checkpoints hold a vision tower too; the text model's name is the shortest.
    return min(names, key=len) if names else None


def head_tensor_names(names: list[str]) -> tuple[str | None, str | None, str | None]:
    """The safetensors names of the embeddings, the final norm and lm_head (None if absent)."""
    embed = _pick([n for n in names if n.endswith("embed_tokens.weight")])
    norm = _pick(
        [n for n in names if n.split(".")[-2:] == ["norm", "weight"] and "layers." not in n]
    )
    head = _pick([n for n in names if n.endswith("lm_head.weight")])
    return embed, norm, head


def read_verifier_head(name_or_path: str, rms_norm_eps: float, flag: str) -> VerifierHead:
    """Read only embed_tokens, the final norm and lm_head from the verifier's safetensors
    (tied embeddings: lm_head is embed_tokens). The rest of the verifier is never loaded."""
    from safetensors import safe_open

    model_dir = resolve_model_dir(name_or_path, flag)
    where = safetensors_index(model_dir, flag)
    embed, norm, head = head_tensor_names(list(where))
    if embed is None or norm is None:
        raise UserInputError(
            f"{flag} {name_or_path}: the safetensors weights have no "
            f"{'embed_tokens' if embed is None else 'final norm'} tensor; is this a decoder-only "
            "language model?"
        )

    def read(name: str) -> torch.Tensor:
        with safe_open(str(where[name]), framework="pt") as f:
            return f.get_tensor(name).float()

    embed_VH = read(embed)
    return VerifierHead(embed_VH, read(norm), read(head) if head else embed_VH, rms_norm_eps)
