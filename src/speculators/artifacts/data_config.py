"""data_config.json: what datagen made and how (the reference's structure, SPEC §2).

Every key of the reference example is present under the same name; extra keys add information.
Reading the file back validates it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from speculators.artifacts.atomic import atomic_write_json
from speculators.artifacts.provenance import VerifierFingerprint
from speculators.errors import UserInputError

DATA_CONFIG_FILE = "data_config.json"


class _Section(BaseModel):
    # Files from other tools may carry keys we do not know; keep them rather than fail.
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class PackageVersions(_Section):
    torch: str
    vllm: str | None = None
    transformers: str
    speculators: str


class Reproducibility(_Section):
    command: str
    package_versions: PackageVersions
    gpu: str | None = None


class ModelSection(_Section):
    target_model_path: str
    tensor_parallel_size: int = 1
    max_model_len: int
    gpu_memory_utilization: float | None = None
    hidden_size: int
    num_hidden_layers: int | None = None  # extra: lets train check layer ids without the verifier
    vocab_size: int | None = None  # extra
    # extra: which verifier made the data, beyond its path (train and eval compare it)
    verifier_fingerprint: VerifierFingerprint | None = None


class DataSection(_Section):
    train_data_path: str
    seq_length: int
    max_samples: int | None = None
    num_samples: int
    seed: int = 0
    chat_template_note: str = "Uses tokenizer's built-in chat template"


class HiddenStatesSection(_Section):
    layer_ids: list[int]
    description: str = "Layers selected for EAGLE3 fusion and target logits"
    vllm_aux_layer_ids: list[int] | None = None  # extra: the same layers in vLLM's convention


class GenerationSection(_Section):
    cache_dir: str | None = None
    backend: str | None = None  # extra: transformers | vllm
    device: str | None = None  # extra
    dtype: str | None = None  # extra
    hidden_states_dtype: str = "bf16"  # extra: how the files store them (bf16 | fp8)


class FormatSection(_Section):
    file_pattern: str = "data_{idx}.pt"
    data_format_version: int = 1
    schema_: dict = Field(alias="schema")

    model_config = ConfigDict(populate_by_name=True, extra="allow")


class DataConfig(_Section):
    version: str = "2.0"
    generated_at: str
    speculators_version: str
    reproducibility: Reproducibility
    model: ModelSection
    data: DataSection
    hidden_states: HiddenStatesSection
    generation: GenerationSection
    format: FormatSection


def format_schema(hidden_size: int, num_layers: int, hidden_dtype: str = "bf16") -> dict:
    """The `format.schema` block of the reference, for version-1 files (and fp8's scales)."""
    schema: dict[str, dict[str, object]] = {
        "input_ids": {
            "dtype": "torch.long",
            "shape": "[seq_len]",
            "description": "Tokenized input sequence",
        },
        "hidden_states": {
            "dtype": "list[torch.bfloat16]",
            "shape": f"list of [seq_len, {hidden_size}]",
            "num_tensors": num_layers,
            "description": f"Hidden states from {num_layers} layers",
        },
        "loss_mask": {
            "dtype": "torch.long",
            "shape": "[seq_len]",
            "description": "1 for assistant tokens to train on, 0 elsewhere",
        },
    }
    if hidden_dtype == "fp8":
        schema["hidden_states"]["dtype"] = "list[torch.float8_e4m3fn]"
        schema["hidden_states_scale"] = {
            "dtype": "list[torch.float32]",
            "shape": "list of [seq_len]",
            "num_tensors": num_layers,
            "description": "per token and layer: hidden state = fp8 value * scale",
        }
    return schema


def save_data_config(output_dir: Path, config: DataConfig) -> Path:
    path = output_dir / DATA_CONFIG_FILE
    atomic_write_json(path, config.model_dump(mode="json", by_alias=True, exclude_none=False))
    return path


def load_data_config(path: Path) -> DataConfig:
    """Read and validate a data_config.json (a file or the dir holding it)."""
    if path.is_dir():
        path = path / DATA_CONFIG_FILE
    try:
        return DataConfig.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UserInputError(f"{path} does not exist; `speculators datagen` writes it.") from None
    except (OSError, ValueError, ValidationError) as e:
        raise UserInputError(
            f"{path} is not a valid data_config.json: {e}. It is written by `speculators "
            "datagen`; regenerate the data or fix the file."
        ) from None


def find_data_configs(data_path: Path) -> dict[Path, DataConfig]:
    """Every data_config.json in or below `data_path`, by the directory holding it."""
    if not data_path.is_dir():
        return {}
    found = sorted(data_path.rglob(DATA_CONFIG_FILE))
    return {path.parent: load_data_config(path) for path in found}


def find_data_config(data_path: Path) -> DataConfig | None:
    """The data_config.json in `data_path` or, for data in subdirs, the first one found below."""
    direct = data_path / DATA_CONFIG_FILE
    if direct.is_file():
        return load_data_config(direct)
    found = sorted(data_path.rglob(DATA_CONFIG_FILE))
    return load_data_config(found[0]) if found else None
