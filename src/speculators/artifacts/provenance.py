"""A verifier's identity, recorded where its outputs are (data_config.json, token_freq.pt, a
draft's config.json) and compared where they are used: two models of the same shape give
files that load fine and train to nothing, so shapes alone are not enough.

The fingerprint has three parts, each a hash (models/fingerprint.py computes them):
`config` (config.json without keys that change on a re-save), `tokenizer` (the token ids:
tokenizer.json's vocabulary and added tokens) and `weights` (sampled rows of the embeddings
and lm_head, and the final norm: the tensors the draft copies, cast to bf16 so a dtype
conversion of the same model matches). A part that could not be computed is None and is not
compared.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

PARTS = {
    "weights": "weights (embeddings, lm_head, final norm)",
    "tokenizer": "tokenizer vocabulary",
    "config": "config.json",
}


class VerifierFingerprint(BaseModel):
    # Read from files other versions wrote: unknown parts are kept, not an error.
    model_config = ConfigDict(extra="allow")

    config: str | None = None
    tokenizer: str | None = None
    weights: str | None = None

    def differences(self, other: VerifierFingerprint) -> list[str]:
        """What differs between the two, in words; [] when every part both have agrees."""
        return [
            words
            for part, words in PARTS.items()
            if getattr(self, part) and getattr(other, part)
            and getattr(self, part) != getattr(other, part)
        ]  # fmt: skip
