"""The layer-id convention (SPEC §2) and batch invariance of the transformers backend."""

from __future__ import annotations

import pytest
import torch

from speculators.datagen.backends.transformers import TransformersBackend

LAYER_IDS = [1, 3, 4, 5]  # the last id is the last of the 6 layers


@pytest.fixture(scope="module")
def models(tiny_llama):
    from transformers import AutoModel, AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    base = AutoModel.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return reference, TransformersBackend(base, LAYER_IDS, torch.device("cpu"))


def sequences(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 300, (n,), generator=g).tolist() for n in lengths]


def test_layer_ids_are_hf_hidden_states_plus_one_and_last_is_pre_norm(models):
    reference, backend = models
    ids = sequences([23])[0]
    pre_norm = {}
    last_layer = reference.model.layers[-1]
    hook = last_layer.register_forward_hook(lambda m, i, o: pre_norm.update(out=o))
    with torch.no_grad():
        hs = reference(torch.tensor([ids]), output_hidden_states=True).hidden_states
    hook.remove()
    stored = backend.capture([ids])[0]
    assert len(stored) == len(LAYER_IDS) and all(t.dtype == torch.bfloat16 for t in stored)
    for layer_id, tensor in zip(LAYER_IDS[:-1], stored[:-1]):
        assert torch.equal(tensor, hs[layer_id + 1][0].to(torch.bfloat16)), layer_id
    last = pre_norm["out"][0] if isinstance(pre_norm["out"], tuple) else pre_norm["out"]
    assert torch.equal(stored[-1], last[0].to(torch.bfloat16))
    # HF's last entry is after the final norm: ours is not that tensor, but normalises to it.
    assert not torch.allclose(stored[-1].float(), hs[-1][0], atol=1e-3)
    normed = reference.model.norm(stored[-1].float()[None])[0]
    torch.testing.assert_close(normed, hs[-1][0], atol=3e-2, rtol=1e-2)
    # And the neighbour tensor a draft must not be trained on differs.
    assert not torch.allclose(stored[0].float(), hs[LAYER_IDS[0]][0], atol=1e-4)


def test_batched_equals_one_by_one(models):
    _, backend = models
    batch = sequences([17, 40, 3, 40, 29], seed=1)
    together = backend.capture(batch)
    for ids, got in zip(batch, together):
        alone = backend.capture([ids])[0]
        for a, b in zip(got, alone):
            assert a.shape == (len(ids), backend.hidden_size)
            # Hidden states of this tiny model are ~0.1: tolerances are relative (bf16 rounding).
            torch.testing.assert_close(a.float(), b.float(), atol=1e-6, rtol=1e-2)
