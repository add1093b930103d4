"""Reading a verifier: its config, and single tensors from its safetensors without loading it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speculators.errors import UserInputError


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
            f"{flag} {name_or_path}: cannot read the model config ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Pass a local model directory or a hub "
            "name that is in the local cache."
        ) from None
    return config.get_text_config() if hasattr(config, "get_text_config") else config
