"""The verifier fingerprint (artifacts/provenance.py), computed in one place for datagen (which
records it), train and eval (which compare), and vocab (the tokenizer part alone).

Cheap on any size of model: config.json and tokenizer.json are hashed as parsed JSON, and the
weights part reads 256 rows of the embeddings and of lm_head plus the final norm through
safetensors' lazy slices, never the whole tensors. Works on local dirs, hub names in the local
cache and converted GGUF models alike (they are all a model dir by then).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from speculators.artifacts.provenance import VerifierFingerprint
from speculators.errors import UserInputError
from speculators.models.verifier import head_tensor_names, resolve_model_dir, safetensors_index

# Keys a re-save or another library version changes without changing the model.
_VOLATILE_CONFIG_KEYS = {
    "transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype",
    "use_cache", "attn_implementation", "_attn_implementation_autoset", "quantization_config",
}  # fmt: skip
_ROW_BLOCKS, _ROWS_PER_BLOCK = 32, 8


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]


def _without_volatile(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_volatile(v) for k, v in obj.items() if k not in _VOLATILE_CONFIG_KEYS}
    return obj


def config_digest(model_dir: Path) -> str | None:
    try:
        return _digest(_without_volatile(json.loads((model_dir / "config.json").read_text())))
    except (OSError, ValueError):
        return None


def tokenizer_digest(model_dir: Path) -> str | None:
    """The token ids a tokenizer produces: tokenizer.json's model (vocab, merges) and added
    tokens, or the raw vocabulary files of tokenizers without one. Chat template and special
    token roles are left out: they change the data, which datagen fingerprints itself."""
    path = model_dir / "tokenizer.json"
    if path.is_file():
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            return _digest([spec.get("model"), spec.get("added_tokens")])
        except (OSError, ValueError):
            return None
    h = hashlib.sha256()
    found = False
    for name in ("tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json"):
        if (model_dir / name).is_file():
            h.update(name.encode() + b"\0" + (model_dir / name).read_bytes())
            found = True
    return h.hexdigest()[:32] if found else None


def _sampled_rows(f: Any, name: str) -> Any:
    """Evenly spaced blocks of rows (all of a small tensor), read lazily, in bf16."""
    import torch

    piece = f.get_slice(name)
    shape = piece.get_shape()
    if len(shape) < 2 or shape[0] <= _ROW_BLOCKS * _ROWS_PER_BLOCK:
        tensor = f.get_tensor(name)
    else:
        last = shape[0] - _ROWS_PER_BLOCK
        starts = sorted({round(i * last / (_ROW_BLOCKS - 1)) for i in range(_ROW_BLOCKS)})
        tensor = torch.cat([piece[s : s + _ROWS_PER_BLOCK] for s in starts])
    return shape, tensor.to(torch.bfloat16).contiguous()


def weights_digest(model_dir: Path, flag: str) -> str | None:
    """The tensors the draft copies or uses for its targets: embeddings, lm_head, final norm.
    None for a model without safetensors weights (the other parts still identify it)."""
    import torch
    from safetensors import safe_open

    try:
        where = safetensors_index(model_dir, flag)
    except UserInputError:
        return None
    h = hashlib.sha256()
    for role, name in zip(("embed", "norm", "lm_head"), head_tensor_names(list(where))):
        if name is None:
            continue
        with safe_open(str(where[name]), framework="pt") as f:
            shape, rows = _sampled_rows(f, name)
        h.update(f"{role}{list(shape)}".encode())
        h.update(rows.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:32]


def verifier_fingerprint(name_or_path: str, flag: str) -> VerifierFingerprint:
    """The fingerprint of a verifier given as a local dir or a cached hub name."""
    model_dir = resolve_model_dir(name_or_path, flag)
    return VerifierFingerprint(
        config=config_digest(model_dir),
        tokenizer=tokenizer_digest(model_dir),
        weights=weights_digest(model_dir, flag),
    )


def tokenizer_fingerprint_of(name_or_path: str, flag: str) -> str | None:
    return tokenizer_digest(resolve_model_dir(name_or_path, flag))
