"""The verifier fingerprint of the real SmolLM2-135M-Instruct as the demo converts it from its
GGUF file: tied embeddings, a tokenizer and config written by the conversion."""

from __future__ import annotations

import pytest

from speculators.models.fingerprint import verifier_fingerprint

pytestmark = pytest.mark.e2e


def test_the_converted_gguf_demo_model_has_every_part(smollm2_dir):
    got = verifier_fingerprint(str(smollm2_dir), "--target-model-path")
    assert got.weights and got.tokenizer and got.config
    assert got == verifier_fingerprint(str(smollm2_dir), "--target-model-path")
