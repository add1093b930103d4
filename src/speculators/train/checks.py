"""What `speculators train` checks before building anything: that it can write where it is told
to, and that the data is complete and comes from the verifier it is given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speculators.artifacts.checkpoint import TRAINING_STATE_FILE
from speculators.artifacts.checkpoint_runs import epoch_dirs
from speculators.artifacts.data_config import DataConfig
from speculators.artifacts.layer_ids import default_layer_ids
from speculators.artifacts.output_paths import check_output_dir
from speculators.artifacts.provenance import VerifierFingerprint
from speculators.artifacts.sample_files import sample_index
from speculators.config.train import TrainConfig
from speculators.errors import UserInputError
from speculators.train.data import DataIndex

VERIFIER_FLAG = "--verifier-name-or-path"
_LOCAL_LOGGERS = ("tensorboard", "wandb", "jsonl")


def check_outputs(config: TrainConfig) -> None:
    """--save-path (and --log-dir, when a logger writes there) can be written, and holds no
    `{epoch}` entry that a checkpoint would replace without having made it."""
    check_output_dir(config.save_path, "--save-path")
    if any(name in _LOCAL_LOGGERS for name in config.logger_names):
        check_output_dir(config.log_dir, "--log-dir")
    for entry in epoch_dirs(config.save_path):
        if not (entry / TRAINING_STATE_FILE).is_file():
            raise UserInputError(
                f"--save-path {config.save_path}: {entry} is not a checkpoint of `speculators "
                f"train` (no {TRAINING_STATE_FILE}), yet training would replace it as epoch "
                f"{entry.name}. Move it away, or pass another --save-path."
            )


def check_layers(
    config: TrainConfig, verifier: Any, index: DataIndex, configs: dict[Path, DataConfig]
) -> list[int]:
    """The data's layer ids (from data_config.json), checked against the verifier and files."""
    n, hidden = verifier.num_hidden_layers, verifier.hidden_size
    if index.hidden_size != hidden:
        raise UserInputError(
            f"the samples under --data-path {config.data_path} have hidden size "
            f"{index.hidden_size} but the verifier {config.verifier_name_or_path} has {hidden}: "
            "they were generated with another model. Pass the verifier the data came from."
        )
    chosen = {tuple(c.hidden_states.layer_ids) for c in configs.values()}
    if len(chosen) > 1:
        raise UserInputError(
            f"--data-path {config.data_path} mixes data of different --layer-ids "
            f"({sorted(chosen)}); use one datagen output per training run."
        )
    ids = list(chosen.pop()) if chosen else default_layer_ids(n)
    where = "data_config.json" if configs else "the automatic choice (no data_config.json)"
    if max(ids) >= n or ids[-1] != n - 1:
        raise UserInputError(
            f"layer ids {ids} from {where} do not fit the verifier {config.verifier_name_or_path} "
            f"({n} decoder layers; the last id must be its last layer, {n - 1}): the data was "
            "generated with another model. Pass the verifier the data came from."
        )
    if len(ids) - 1 != index.num_aux_layers:
        raise UserInputError(
            f"the samples under --data-path {config.data_path} hold {index.num_aux_layers} "
            f"auxiliary layers but {where} lists {len(ids) - 1} ({ids[:-1]}). The files and "
            "data_config.json disagree; regenerate the data with `speculators datagen`."
        )
    return ids


def check_complete(
    config: TrainConfig, index: DataIndex, configs: dict[Path, DataConfig]
) -> list[str]:
    """Each datagen dir holds exactly the samples its data_config.json lists. Returns notes."""
    notes = []
    for where, data_config in configs.items():
        expected = data_config.data.num_samples
        present = {sample_index(p) for p in index.files if p.parent == where}
        extra = sorted(i for i in present if i is not None and i >= expected)
        if extra:
            raise UserInputError(
                f"--data-path: {where} holds data_{extra[0]}.pt (and {len(extra) - 1} more) "
                f"beyond the {expected} samples its data_config.json lists: files of another "
                "datagen run. Move them out, or regenerate the data with `speculators datagen`."
            )
        missing = [i for i in range(expected) if i not in present]
        if not missing:
            continue
        what = (
            f"{where} is incomplete: its data_config.json lists {expected} samples, "
            f"{len(missing)} are missing (data_{missing[0]}.pt first)"
        )
        if config.allow_missing_samples:
            notes.append(f"{what}; training on the {expected - len(missing)} present")
            continue
        raise UserInputError(
            f"--data-path: {what}. Either datagen has not finished (rerun its command, recorded "
            f"in data_config.json: `{data_config.reproducibility.command}`; it computes only "
            "the missing samples), or files were deleted on purpose: then pass "
            "--allow-missing-samples."
        )
    return notes


def _recorded_fingerprint(data_config: DataConfig) -> VerifierFingerprint | None:
    """The verifier fingerprint data_config.json records; for data of older versions, the
    fingerprint of the model it names, when that model is at hand."""
    from speculators.models.fingerprint import verifier_fingerprint

    if data_config.model.verifier_fingerprint is not None:
        return data_config.model.verifier_fingerprint
    named = data_config.model.target_model_path
    try:
        return verifier_fingerprint(named, "data_config.json model.target_model_path")
    except UserInputError:
        return None


def check_verifier(
    config: TrainConfig, verifier: VerifierFingerprint, configs: dict[Path, DataConfig]
) -> list[str]:
    """The data came from `verifier` (by fingerprint, not only by shape). Returns notes."""
    notes = []
    for where, data_config in configs.items():
        named = data_config.model.target_model_path
        recorded = _recorded_fingerprint(data_config)
        if recorded is None:
            notes.append(
                f"{where / 'data_config.json'} records no verifier fingerprint (older datagen) "
                f"and its model {named} is not at hand: not checked that the data came from "
                f"{config.verifier_name_or_path}"
            )
            continue
        diffs = recorded.differences(verifier)
        if not diffs:
            continue
        what = (
            f"--data-path {where} was generated with the verifier {named}, but "
            f"{VERIFIER_FLAG} {config.verifier_name_or_path} is another model (their "
            f"{' and '.join(diffs)} differ)"
        )
        if config.allow_verifier_mismatch:
            notes.append(f"{what}; training anyway (--allow-verifier-mismatch)")
            continue
        raise UserInputError(
            f"{what}: a draft trained on this pair learns nothing useful. Pass the verifier the "
            "data came from, regenerate the data with this one, or pass "
            "--allow-verifier-mismatch if they are the same model saved differently."
        )
    return notes
