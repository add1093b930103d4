"""SPEC §2 layer-id convention: auto-selection, validation, and the vLLM (+1) naming."""

from __future__ import annotations

import pytest

from speculators.artifacts.layer_ids import (
    default_layer_ids,
    from_vllm_aux_layer_ids,
    resolve_layer_ids,
    to_vllm_aux_layer_ids,
)
from speculators.errors import UserInputError


def test_llama_3_1_8b_auto_choice_and_vllm_ids():
    # The reference example: 32 layers -> [2, 16, 29, 31]; vLLM serves aux [3, 17, 30].
    assert default_layer_ids(32) == [2, 16, 29, 31]
    assert to_vllm_aux_layer_ids([2, 16, 29, 31]) == [3, 17, 30]
    assert from_vllm_aux_layer_ids([3, 17, 30]) == [2, 16, 29]


@pytest.mark.parametrize("n", [7, 8, 30, 80, 126])
def test_auto_choice_is_distinct_and_ends_with_last_layer(n):
    ids = default_layer_ids(n)
    assert ids == [2, n // 2, n - 3, n - 1]
    assert len(set(ids)) == 4 and ids == sorted(ids)


def test_small_models_get_distinct_last_layers():
    # [2, n // 2, n - 3] would repeat layer 3 at n = 6
    assert default_layer_ids(6) == [2, 3, 4, 5]
    assert default_layer_ids(4) == [0, 1, 2, 3]
    with pytest.raises(UserInputError, match="--layer-ids"):
        default_layer_ids(3)


def test_out_of_range_names_layer_count_and_auto_choice():
    with pytest.raises(UserInputError) as e:
        resolve_layer_ids([2, 28, 54], 32)
    assert "32 decoder layers" in str(e.value) and "[2, 16, 29, 31]" in str(e.value)
    with pytest.raises(UserInputError, match="out of range"):
        resolve_layer_ids([-1, 3], 32)


def test_repeated_or_single_ids_are_refused():
    with pytest.raises(UserInputError, match="repeats"):
        resolve_layer_ids([2, 2, 31], 32)
    with pytest.raises(UserInputError, match="at least two"):
        resolve_layer_ids([31], 32)
