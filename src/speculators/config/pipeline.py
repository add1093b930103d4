"""Configuration of `speculators pipeline`: one output root and a section per stage whose keys
are the stage's own flag names (`seq_length` for `--seq-length`), from YAML/TOML and/or flags.
The `regenerate` stage runs only when its section is present (`enabled: false` turns it off).

    # pipeline.yaml
    output_dir: ./run
    target_model_path: ./SmolLM2-135M-Instruct
    train_data_path: sharegpt
    regenerate: {max_new_tokens: 512}   # train on the verifier's own replies
    datagen: {max_samples: 300, seq_length: 512}
    vocab: {draft_vocab_size: 8192}
    train: {epochs: 3, lr: 3.0e-4}
    eval: {num_prompts: 10, max_new_tokens: 64}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from speculators.config.base import StrictModel, error_text
from speculators.config.datagen import DatagenConfig
from speculators.config.eval import EvalConfig
from speculators.config.regenerate import RegenerateConfig
from speculators.config.train import TrainConfig
from speculators.config.vocab import VocabConfig

STAGES = ("regenerate", "datagen", "vocab", "train", "eval")
Stage = Literal["regenerate", "datagen", "vocab", "train", "eval"]

# Fields the pipeline sets itself: paths inside the output root, the verifier everywhere,
# whether training resumes (it does unless the stage's inputs changed), and replacing earlier
# outputs (the pipeline owns its output root, see pipeline.check_ownership).
DERIVED = {
    "regenerate": ("target_model_path", "train_data_path", "output_path", "overwrite"),
    "datagen": ("output_dir", "token_freq_path", "overwrite"),
    "vocab": (
        "token_freq_path", "output_path", "target_model_path", "target_vocab_size", "overwrite",
    ),
    "train": (
        "verifier_name_or_path", "data_path", "save_path", "log_dir", "d2t_path", "t2d_path",
        "no_resume_from_checkpoint",
    ),
    "eval": ("checkpoint_dir", "verifier_name_or_path", "output_dir", "overwrite"),
}  # fmt: skip
STAGE_CONFIGS: dict[str, type[StrictModel]] = {
    "regenerate": RegenerateConfig,
    "datagen": DatagenConfig,
    "vocab": VocabConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


class PipelineConfig(StrictModel):
    """datagen -> vocab -> train -> eval under one output root, each stage resumable."""

    output_dir: Path = Field(
        Path("./speculators_run"),
        description="Output root: data/, vocab/, checkpoints/, logs/, eval/, pipeline_state.json.",
    )
    target_model_path: str | None = Field(
        None, description="The verifier, used by every stage (same as datagen.target_model_path)."
    )
    train_data_path: str | None = Field(
        None, description="Training conversations (same as datagen.train_data_path)."
    )
    from_stage: Stage | None = Field(
        None, description="Re-run from this stage on, even where outputs are complete."
    )
    to_stage: Stage = Field("eval", description="Stop after this stage.")
    overwrite: bool = Field(
        False,
        description="Let the pipeline replace files in --output-dir that it did not make (an "
        "output root without pipeline_state.json); without it, such a root is refused.",
    )
    regenerate: dict[str, Any] | None = Field(
        None,
        description="`regenerate` flags; the stage runs when this section is present and "
        "`enabled` is not false.",
    )
    datagen: dict[str, Any] = Field(default_factory=dict, description="`datagen` flags.")
    vocab: dict[str, Any] = Field(default_factory=dict, description="`vocab` flags.")
    train: dict[str, Any] = Field(default_factory=dict, description="`train` flags.")
    eval: dict[str, Any] = Field(default_factory=dict, description="`eval` flags.")

    @property
    def regenerate_section(self) -> dict[str, Any] | None:
        """The regenerate flags, or None when the stage is off."""
        if self.regenerate is None or self.regenerate.get("enabled", True) is False:
            return None
        return {k: v for k, v in self.regenerate.items() if k != "enabled"}

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        for stage in STAGES:
            section = getattr(self, stage) or {}
            derived = [k for k in section if k in DERIVED[stage]]
            if derived:
                raise ValueError(
                    f"{stage}.{derived[0]} is set by the pipeline from --output-dir (and "
                    "--target-model-path); remove it from the config."
                )
        if self.regenerate_section is None and "regenerate" in (self.from_stage, self.to_stage):
            raise ValueError(
                "--from-stage/--to-stage regenerate: the regenerate stage is off; add a "
                "`regenerate` section (e.g. --set regenerate.enabled=true) to run it."
            )
        if self.from_stage and STAGES.index(self.from_stage) > STAGES.index(self.to_stage):
            raise ValueError(
                f"--from-stage {self.from_stage} comes after --to-stage {self.to_stage}."
            )
        for top in ("target_model_path", "train_data_path"):
            if getattr(self, top) and self.datagen.get(top) not in (None, getattr(self, top)):
                raise ValueError(f"--{top.replace('_', '-')} and datagen.{top} disagree.")
        self.stage_configs()  # every section validates now, before any stage runs
        return self

    @property
    def paths(self) -> dict[str, Path]:
        root = self.output_dir
        names = ("regenerated", "data", "vocab", "checkpoints", "logs", "eval", "model")
        return {name: root / name for name in names}

    def stage_configs(self) -> dict[str, Any]:
        """The resolved config of every stage that runs, exactly as its subcommand would get it."""
        p = self.paths
        model = self.target_model_path or self.datagen.get("target_model_path")
        data = self.train_data_path or self.datagen.get("train_data_path")
        if not model or not data:
            missing = "--target-model-path" if not model else "--train-data-path"
            raise ValueError(f"{missing} is required (top level or in the datagen section).")
        token_freq = p["data"] / "token_freq.pt"
        datagen = {**self.datagen, "target_model_path": model, "train_data_path": data}
        datagen |= {"output_dir": p["data"], "token_freq_path": token_freq, "overwrite": True}
        configs: dict[str, Any] = {}
        regenerate = self.regenerate_section
        if regenerate is not None:
            # datagen's selection (seed, max_samples) and length unless set here, then datagen
            # reads the regenerated conversations
            selection: Any = _build("datagen", datagen)
            regenerate = {
                "seed": selection.seed,
                "max_samples": selection.max_samples,
                "seq_length": selection.seq_length,
                **regenerate,
                "target_model_path": model,
                "train_data_path": data,
                "output_path": p["regenerated"] / "conversations.jsonl",
                "overwrite": True,
            }
            configs["regenerate"] = _build("regenerate", regenerate)
            datagen["train_data_path"] = str(p["regenerated"] / "conversations.jsonl")
        vocab = {**self.vocab, "token_freq_path": token_freq, "output_path": p["vocab"]}
        vocab |= {"target_model_path": model, "overwrite": True}
        train = {**self.train, "verifier_name_or_path": model, "data_path": p["data"]}
        train |= {"save_path": p["checkpoints"], "log_dir": p["logs"]}
        train |= {"d2t_path": p["vocab"] / "d2t.npy", "t2d_path": p["vocab"] / "t2d.npy"}
        for stage, values in (("datagen", datagen), ("vocab", vocab), ("train", train)):
            configs[stage] = _build(stage, values)
        epochs = configs["train"].epochs
        # Prompts from the other end of the shuffle the training conversations came from.
        reader = configs.get("regenerate") or configs["datagen"]
        eval_values = {"seed": reader.seed, **self.eval}
        if "data_path" not in eval_values:
            if not (data == "sharegpt" or Path(data).suffix in (".json", ".jsonl")):
                raise ValueError(
                    f"eval.data_path is required: eval reads prompts from `sharegpt` or a local "
                    f".json/.jsonl file, not from {data}."
                )
            eval_values["data_path"] = data
        eval_values |= {"checkpoint_dir": p["checkpoints"] / str(epochs - 1)}
        eval_values |= {"verifier_name_or_path": model, "output_dir": p["eval"], "overwrite": True}
        configs["eval"] = _build("eval", eval_values)
        return configs


def _build(stage: str, values: dict[str, Any]) -> StrictModel:
    try:
        return STAGE_CONFIGS[stage](**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int))
        msg = error_text(err)
        if err.get("type") == "extra_forbidden":
            msg = f"not a setting of `speculators {stage}` (see `speculators {stage} --help`)"
        raise ValueError(f"{stage}.{where}: {msg}" if where else f"{stage}: {msg}") from None


def load_config_file(path: Path) -> dict[str, Any]:
    """A pipeline config from .yaml/.yml or .toml (tomllib on 3.11+, else `tomli` if present)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--config {path}: cannot read it ({e.strerror}).") from None
    except UnicodeDecodeError:
        raise ValueError(f"--config {path}: not a text file (not UTF-8).") from None
    suffix = Path(path).suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        parse = yaml.safe_load
    elif suffix == ".toml":
        parse = _toml().loads
    else:
        raise ValueError(f"--config {path}: use a .yaml, .yml or .toml file.")
    try:
        values = parse(text) or {}
    except Exception as e:  # yaml.YAMLError, tomllib.TOMLDecodeError
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise ValueError(f"--config {path}: not valid {suffix[1:].upper()} ({first}).") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: the top level must be a mapping of keys to values.")
    return _checked_keys(path, values)


def _checked_keys(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Known top-level keys only, and each stage section a mapping (an empty one: {})."""
    tops = [k for k in PipelineConfig.model_fields if k not in STAGES]
    for key, value in list(values.items()):
        if key not in STAGES and key not in tops:
            raise ValueError(
                f"--config {path}: unknown key {key!r}. The top level takes {', '.join(tops)} "
                f"and a section per stage: {', '.join(STAGES)}."
            )
        if key in STAGES and value is None and key != "regenerate":
            values[key] = {}
        elif key in STAGES and value is not None and not isinstance(value, dict):
            raise ValueError(
                f"--config {path}: the {key} section must be a mapping of `{key}` flags to "
                f"values, e.g. {key}: {{...}} (got {value!r})."
            )
    return values


def _toml() -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError(
                "--config: reading TOML on Python 3.10 needs the `tomli` package "
                "(pip install tomli), or use a YAML config file."
            ) from None
    return tomllib


def apply_overrides(values: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """`--set train.epochs=3` style overrides (values parsed as YAML scalars/lists)."""
    import yaml

    out = json.loads(json.dumps(values, default=str))
    for item in assignments:
        key, sep, raw = item.partition("=")
        stage, dot, name = key.strip().partition(".")
        if not sep or not dot or stage not in STAGES or not name:
            raise ValueError(
                f"--set {item!r}: expected STAGE.FIELD=VALUE with STAGE one of "
                f"{', '.join(STAGES)}, e.g. --set train.epochs=3."
            )
        out[stage] = {**(out.get(stage) or {}), name.replace("-", "_"): yaml.safe_load(raw)}
    return out
