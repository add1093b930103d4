"""Typed, validated configs for every subcommand and for the on-disk metadata files.

Nothing here imports torch: configs are built and validated before any heavy work starts.
"""

from speculators.config.base import StrictModel, flag, shell_command
from speculators.config.datagen import DatagenConfig
from speculators.config.eval import EvalConfig
from speculators.config.pipeline import PipelineConfig
from speculators.config.regenerate import RegenerateConfig
from speculators.config.train import TrainConfig
from speculators.config.vocab import VocabConfig

__all__ = [
    "DatagenConfig",
    "EvalConfig",
    "PipelineConfig",
    "RegenerateConfig",
    "StrictModel",
    "TrainConfig",
    "VocabConfig",
    "flag",
    "shell_command",
]
