"""The layer-id convention (SPEC §2), in one place.

Our id `i` is the output of decoder layer i (0-based) before the final norm, i.e. Hugging Face
`output_hidden_states[i + 1]` for every layer but the last. vLLM names the same tensor by the
layer it enters, so its `eagle_aux_hidden_state_layer_ids` are ours + 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from speculators.errors import UserInputError


def default_layer_ids(num_layers: int) -> list[int]:
    """Auto-selection: aux layers [2, n // 2, n - 3] plus the last layer for the targets.

    Below 7 layers that formula repeats a layer; such (test-sized) models get their last four.
    """
    if num_layers < 4:
        raise UserInputError(
            f"the verifier has {num_layers} decoder layers; EAGLE-3 needs at least 4 to pick "
            "distinct auxiliary layers automatically. Pass --layer-ids explicitly."
        )
    if num_layers < 7:
        return list(range(num_layers - 4, num_layers))
    return [2, num_layers // 2, num_layers - 3, num_layers - 1]


def resolve_layer_ids(layer_ids: Sequence[int] | None, num_layers: int) -> list[int]:
    """Check explicit ids against the model, or auto-select. The last id feeds the targets."""
    if not layer_ids:
        return default_layer_ids(num_layers)
    ids = list(layer_ids)
    bad = [i for i in ids if not 0 <= i < num_layers]
    if bad:
        auto = default_layer_ids(num_layers) if num_layers >= 4 else "n/a"
        raise UserInputError(
            f"--layer-ids {' '.join(map(str, ids))}: id {bad[0]} is out of range; the verifier has "
            f"{num_layers} decoder layers, so ids run from 0 to {num_layers - 1} (id i is the "
            f"output of decoder layer i). Omit --layer-ids for the automatic choice {auto}."
        )
    if len(set(ids)) != len(ids):
        raise UserInputError(f"--layer-ids {' '.join(map(str, ids))} repeats a layer id.")
    if len(ids) < 2:
        raise UserInputError(
            "--layer-ids needs at least two ids: the auxiliary layers, then the last layer."
        )
    return ids


def to_vllm_layer_ids(layer_ids: Sequence[int]) -> list[int]:
    """Our ids -> vLLM's names for the same tensors (the layer each enters). The last layer's
    output enters no layer; vLLM still accepts its number n as "after the last layer"."""
    return [i + 1 for i in layer_ids]


def to_vllm_aux_layer_ids(layer_ids: Sequence[int]) -> list[int]:
    """Our ids (aux layers then last) -> vLLM's `eagle_aux_hidden_state_layer_ids` (aux + 1)."""
    return to_vllm_layer_ids(layer_ids[:-1])


def from_vllm_aux_layer_ids(vllm_ids: Sequence[int]) -> list[int]:
    """vLLM's aux ids (the layer a tensor enters) -> ours (the layer that produced it)."""
    return [i - 1 for i in vllm_ids]
