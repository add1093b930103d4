"""What datagen leaves beside the samples: data_config.json, and the checks that protect
earlier outputs (an output dir or token_freq.pt from a different config is never mixed in)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from speculators import __version__
from speculators.artifacts.data_config import (
    DATA_CONFIG_FILE,
    DataConfig,
    format_schema,
    load_data_config,
    save_data_config,
)
from speculators.artifacts.layer_ids import to_vllm_aux_layer_ids
from speculators.artifacts.provenance import VerifierFingerprint
from speculators.artifacts.sample_files import sample_index
from speculators.artifacts.token_freq import TokenFreqMeta, load_token_freq_meta
from speculators.config import DatagenConfig, flag, shell_command
from speculators.datagen.preprocess import default_cache_dir
from speculators.errors import UserInputError


def _sample_files(output_dir: Path) -> list[Path]:
    return [p for p in output_dir.glob("data_*.pt") if sample_index(p) is not None]


def _differences(old: DataConfig, config: DatagenConfig, layer_ids: Sequence[int]) -> list[str]:
    pairs = [
        ("target_model_path", old.model.target_model_path, config.target_model_path),
        ("train_data_path", old.data.train_data_path, config.train_data_path),
        ("seq_length", old.data.seq_length, config.seq_length),
        ("max_samples", old.data.max_samples, config.max_samples),
        ("seed", old.data.seed, config.seed),
        ("layer_ids", old.hidden_states.layer_ids, list(layer_ids)),
        ("hidden_states_dtype", old.generation.hidden_states_dtype, config.hidden_states_dtype),
    ]
    return [f"{flag(name)} was {a!r}, now {b!r}" for name, a, b in pairs if a != b]


def check_output_dir(
    config: DatagenConfig,
    fingerprint: str,
    layer_ids: Sequence[int],
    verifier: VerifierFingerprint | None,
) -> None:
    """Allow a fresh dir or a resume of the same config on the same model; refuse (or, with
    --overwrite, clear) a dir holding samples of a different config or model."""
    out = config.output_dir
    if not out.is_dir():
        return
    samples = _sample_files(out)
    config_path = out / DATA_CONFIG_FILE
    why = f"it holds {len(samples)} sample files but no {DATA_CONFIG_FILE}"
    if config_path.is_file():
        try:
            old = load_data_config(config_path)
        except UserInputError:
            why = f"its {DATA_CONFIG_FILE} is unreadable"
        else:
            recorded = old.model.verifier_fingerprint
            changed = recorded.differences(verifier) if recorded and verifier else []
            if (old.generation.model_extra or {}).get("fingerprint") == fingerprint:
                if not changed:
                    return
                why = (
                    f"the model at --target-model-path {config.target_model_path} changed since "
                    f"its samples were written (its {', '.join(changed)} differ)"
                )
            else:
                diffs = _differences(old, config, layer_ids)
                why = "it was written with a different config" + (
                    f" ({'; '.join(diffs)})" if diffs else " (the tokenizer, model or data changed)"
                )
    elif not samples:
        return
    if not config.overwrite:
        raise UserInputError(
            f"--output-dir {out}: {why}. Refusing to mix two sets of samples. Use another "
            "--output-dir, rerun with the original flags to resume, or pass --overwrite to "
            "delete its data_*.pt files and start again."
        )
    for path in samples:
        path.unlink()
    config_path.unlink(missing_ok=True)


def check_token_freq_path(config: DatagenConfig, meta: TokenFreqMeta) -> None:
    """An existing token_freq.pt counted over other data is only replaced with --overwrite."""
    path = config.token_freq_path
    if not path.exists() or config.overwrite:
        return
    try:
        old = load_token_freq_meta(path)
    except UserInputError:
        old = None
    if old is not None and old.fingerprint == meta.fingerprint:
        return
    what = (
        f"counts of {old.train_data_path} on {old.target_model_path}"
        if old is not None
        else "counts from another run or tool"
    )
    raise UserInputError(
        f"--token-freq-path {path} already holds {what}. Pass another --token-freq-path (e.g. "
        f"inside --output-dir), delete the file, or pass --overwrite to replace it."
    )


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def config_command(config: DatagenConfig) -> str:
    """The CLI command equivalent to `config`, for data_config.json when called from Python."""
    parts = ["speculators", "datagen"]
    for name, value in config.model_dump().items():
        if value == DatagenConfig.model_fields[name].default and name not in ("output_dir",):
            continue
        if isinstance(value, bool):
            parts += [flag(name)] if value else []
        elif isinstance(value, list):
            parts += [flag(name), *map(str, value)]
        else:
            parts += [flag(name), str(value)]
    return shell_command(parts)


def write_data_config(
    config: DatagenConfig,
    verifier: Any,
    backend: Any,
    layer_ids: list[int],
    num_samples: int,
    fingerprint: str,
    command: str | None,
    verifier_fingerprint: VerifierFingerprint | None,
    regenerated_from: dict[str, Any] | None = None,
) -> Path:
    import torch

    # The vllm backend knows its GPU; asking torch here would open a CUDA context in this
    # process after vLLM has sized its memory.
    gpu = getattr(backend, "gpu_name", None)
    if gpu is None and getattr(getattr(backend, "device", None), "type", "") == "cuda":
        gpu = torch.cuda.get_device_name(0)
    data_config = DataConfig.model_validate(
        {
            "generated_at": datetime.now(timezone.utc).isoformat(),
            "speculators_version": __version__,
            "reproducibility": {
                "command": command or config_command(config),
                "package_versions": {
                    "torch": torch.__version__,
                    "vllm": getattr(backend, "vllm_version", None) or _version("vllm"),
                    "transformers": _version("transformers") or "unknown",
                    "speculators": __version__,
                },
                "gpu": gpu,
            },
            "model": {
                "target_model_path": config.target_model_path,
                "tensor_parallel_size": config.tensor_parallel_size,
                "max_model_len": config.seq_length,
                "gpu_memory_utilization": config.gpu_memory_utilization,
                "hidden_size": int(verifier.hidden_size),
                "num_hidden_layers": int(verifier.num_hidden_layers),
                "vocab_size": int(verifier.vocab_size),
                "verifier_fingerprint": verifier_fingerprint,
            },
            "data": {
                "train_data_path": config.train_data_path,
                "seq_length": config.seq_length,
                "max_samples": config.max_samples,
                "num_samples": num_samples,
                "seed": config.seed,
                # extra: who wrote the replies, when `speculators regenerate` did
                **({"regenerated_from": regenerated_from} if regenerated_from else {}),
            },
            "hidden_states": {
                "layer_ids": layer_ids,
                "vllm_aux_layer_ids": to_vllm_aux_layer_ids(layer_ids),
            },
            "generation": {
                "cache_dir": str(config.cache_dir or default_cache_dir()),
                "backend": backend.name,
                "device": str(getattr(backend, "device", "cuda")),
                "dtype": str(getattr(backend, "dtype", "")).removeprefix("torch.") or None,
                "fingerprint": fingerprint,
                "token_freq_path": str(config.token_freq_path),
                "hidden_states_dtype": config.hidden_states_dtype,
            },
            "format": {
                "schema": format_schema(
                    int(verifier.hidden_size), len(layer_ids), config.hidden_states_dtype
                )
            },
        }
    )
    return save_data_config(config.output_dir, data_config)
