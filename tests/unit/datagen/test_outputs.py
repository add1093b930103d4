"""The command data_config.json records for a datagen run started from Python: a shell line
that gives the same arguments back, whatever the paths hold."""

from __future__ import annotations

import shlex

from speculators.config import DatagenConfig
from speculators.datagen.outputs import config_command


def test_recorded_command_is_quoted_for_the_shell():
    config = DatagenConfig(
        target_model_path="/models/my model", train_data_path="data's.jsonl",
        output_dir="out dir", layer_ids=[2, 4, 5, 7], overwrite=True,
    )  # fmt: skip
    argv = shlex.split(config_command(config))
    assert argv[:2] == ["speculators", "datagen"]
    value = lambda flag: argv[argv.index(flag) + 1]  # noqa: E731
    assert value("--target-model-path") == "/models/my model"
    assert value("--train-data-path") == "data's.jsonl"
    assert value("--output-dir") == "out dir"
    i = argv.index("--layer-ids")
    assert argv[i + 1 : i + 5] == ["2", "4", "5", "7"] and "--overwrite" in argv
