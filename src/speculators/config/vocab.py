"""Configuration of `speculators vocab`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from speculators.config.base import StrictModel


class VocabConfig(StrictModel):
    """Build the d2t / t2d draft vocabulary mapping from token frequencies."""

    token_freq_path: Path = Field(
        Path("./token_freq.pt"),
        description="Token frequency file written by `speculators datagen`.",
    )
    draft_vocab_size: int = Field(
        32000, gt=0, description="Number of target tokens the draft model can propose."
    )
    target_vocab_size: int | None = Field(
        None, gt=0, description="Vocab size of the verifier (give this or --target-model-path)."
    )
    target_model_path: str | None = Field(
        None,
        description="Verifier model dir or cached hub name; its config gives the vocab size.",
    )
    output_path: Path = Field(
        Path("./vocab_mapping"), description="Directory to write d2t.npy and t2d.npy into."
    )
    overwrite: bool = Field(
        False,
        description="Replace a d2t.npy / t2d.npy in --output-path that holds a different mapping "
        "(without it such files are kept and the command refuses).",
    )
    allow_unrecorded_token_freq: bool = Field(
        False,
        description="Accept a token_freq.pt with no record of the tokenizer it was counted with "
        "(written by another tool); it is then checked only against the vocab size.",
    )

    @model_validator(mode="after")
    def _check(self) -> VocabConfig:
        if (self.target_vocab_size is None) == (self.target_model_path is None):
            raise ValueError(
                "give exactly one of --target-vocab-size or --target-model-path: the first states "
                "the verifier's vocab size, the second reads it from the verifier's config."
            )
        if self.target_vocab_size is not None and self.draft_vocab_size > self.target_vocab_size:
            raise ValueError(
                f"--draft-vocab-size {self.draft_vocab_size} is larger than --target-vocab-size "
                f"{self.target_vocab_size}; the draft vocab is a subset of the verifier's, so use "
                f"at most {self.target_vocab_size}."
            )
        return self
