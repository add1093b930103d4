"""PipelineConfig: YAML and TOML give the same stage configs, paths come from the output root,
and section keys are the subcommands' own field names."""

from __future__ import annotations

from pathlib import Path

import pytest

from speculators.config import DatagenConfig, EvalConfig, PipelineConfig, TrainConfig
from speculators.config.pipeline import apply_overrides, load_config_file

YAML = """
output_dir: ./run
target_model_path: ./model
train_data_path: sharegpt
datagen: {max_samples: 300, seq_length: 512, layer_ids: [2, 4, 5, 7]}
vocab: {draft_vocab_size: 8192}
train: {epochs: 3, lr: 3.0e-4}
eval: {num_prompts: 10}
"""

TOML = """
output_dir = "./run"
target_model_path = "./model"
train_data_path = "sharegpt"
[datagen]
max_samples = 300
seq_length = 512
layer_ids = [2, 4, 5, 7]
[vocab]
draft_vocab_size = 8192
[train]
epochs = 3
lr = 3.0e-4
[eval]
num_prompts = 10
"""


def test_yaml_and_toml_agree_and_resolve_every_stage(tmp_path: Path):
    (tmp_path / "p.yaml").write_text(YAML)
    (tmp_path / "p.toml").write_text(TOML)
    a = PipelineConfig(**load_config_file(tmp_path / "p.yaml"))
    b = PipelineConfig(**load_config_file(tmp_path / "p.toml"))
    assert a == b
    s = a.stage_configs()
    assert s["datagen"] == DatagenConfig(
        target_model_path="./model", train_data_path="sharegpt", output_dir=Path("run/data"),
        max_samples=300, seq_length=512, layer_ids=[2, 4, 5, 7],
        token_freq_path=Path("run/data/token_freq.pt"), overwrite=True,
    )  # fmt: skip
    assert s["vocab"].draft_vocab_size == 8192 and s["vocab"].output_path == Path("run/vocab")
    assert s["train"] == TrainConfig(
        verifier_name_or_path="./model", data_path=Path("run/data"), epochs=3, lr=3e-4,
        save_path=Path("run/checkpoints"), log_dir=Path("run/logs"),
        d2t_path=Path("run/vocab/d2t.npy"), t2d_path=Path("run/vocab/t2d.npy"),
    )  # fmt: skip
    # eval measures the last epoch, on the held-out end of datagen's shuffle of the same data.
    assert s["eval"] == EvalConfig(
        checkpoint_dir=Path("run/checkpoints/2"), verifier_name_or_path="./model",
        data_path="sharegpt", num_prompts=10, output_dir=Path("run/eval"), seed=0,
        overwrite=True,
    )  # fmt: skip


def test_overrides_parse_values_and_win():
    values = apply_overrides({"train": {"epochs": 3}}, ["train.epochs=5", "train.lr=1e-3"])
    assert values["train"] == {"epochs": 5, "lr": "1e-3"}
    config = PipelineConfig(target_model_path="m", train_data_path="d.jsonl", **values)
    assert config.stage_configs()["train"].lr == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="STAGE.FIELD=VALUE"):
        apply_overrides({}, ["epochs=3"])


def test_unknown_or_derived_keys_name_the_section():
    with pytest.raises(ValueError, match=r"train\.epoch: not a setting of `speculators train`"):
        PipelineConfig(target_model_path="m", train_data_path="d.jsonl", train={"epoch": 3})
    with pytest.raises(ValueError, match=r"eval\.output_dir is set by the pipeline"):
        PipelineConfig(target_model_path="m", train_data_path="d.jsonl", eval={"output_dir": "x"})
    with pytest.raises(ValueError, match="eval.data_path is required"):
        PipelineConfig(target_model_path="m", train_data_path="org/hub-dataset")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: 5\n", r"the train section must be a mapping of `train` flags .* \(got 5\)"),
        ("datagen: [1, 2]\n", r"the datagen section must be a mapping"),
        ("bogus_stage: {x: 1}\n", r"unknown key 'bogus_stage'\. The top level takes output_dir"),
        ("output-dir: ./x\n", r"unknown key 'output-dir'"),
    ],
)
def test_config_files_with_misplaced_keys_name_the_file_and_key(tmp_path: Path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        load_config_file(path)
    assert str(e.value).startswith(f"--config {path}: ")


def test_a_config_file_that_is_not_text_or_has_empty_sections(tmp_path: Path):
    binary = tmp_path / "p.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ValueError, match="not a text file"):
        load_config_file(binary)
    empty = tmp_path / "e.yaml"
    empty.write_text("train:\nregenerate:\n")
    assert load_config_file(empty) == {"train": {}, "regenerate": None}
