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


def assert_batched_equals_one_by_one(backend, batch):
    """Returns the batched capture."""
    together = backend.capture(batch)
    for ids, got in zip(batch, together):
        alone = backend.capture([ids])[0]
        for a, b in zip(got, alone):
            assert a.shape == (len(ids), backend.hidden_size)
            # Hidden states of this tiny model are ~0.1: tolerances are relative (bf16 rounding).
            torch.testing.assert_close(a.float(), b.float(), atol=1e-6, rtol=1e-2)
    return together


def test_batched_equals_one_by_one(models):
    assert_batched_equals_one_by_one(models[1], sequences([17, 40, 3, 40, 29], seed=1))


def test_padded_causal_mask_is_causal_and_hides_padding_keys():
    from speculators.datagen.backends.transformers import padded_causal_mask

    lengths = [5, 2, 3]
    mask = padded_causal_mask(torch.tensor(lengths), 5)
    assert mask.shape == (3, 1, 5, 5) and mask.dtype == torch.bool
    for b, n in enumerate(lengths):
        for q in range(5):
            for k in range(5):
                assert bool(mask[b, 0, q, k]) == (k <= q and k < n), (b, q, k)
    assert mask.any(-1).all()  # no query row fully masked (that would give NaNs)


def test_padded_batches_match_the_two_d_mask_path(models):
    """Our prebuilt mask (no host read of the padding) against transformers' own mask."""
    _, backend = models
    batch = sequences([9, 31, 4], seed=2)
    assert backend.prebuilt_mask  # SDPA: the default
    ours = backend.capture(batch)
    backend.prebuilt_mask = False
    try:
        theirs = backend.capture(batch)
    finally:
        backend.prebuilt_mask = True
    for a_layers, b_layers in zip(ours, theirs):
        for a, b in zip(a_layers, b_layers):
            assert torch.equal(a, b)


def test_eager_attention_keeps_the_two_d_mask(tiny_llama):
    """Eager attention adds a float mask: a boolean one would be wrong there, so it is not used."""
    from transformers import AutoModel

    base = AutoModel.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="eager")
    backend = TransformersBackend(base.eval(), LAYER_IDS, torch.device("cpu"))
    assert not backend.prebuilt_mask
    assert_batched_equals_one_by_one(backend, sequences([12, 5], seed=3))
    backend.close()


def test_compiled_layers_match_eager_and_keep_hooks_and_weights(tiny_llama):
    """torch.compile'd decoder layers (aot_eager here: no C compiler needed) store the same
    states, batched and one by one, and leave the state dict's names and values alone."""
    from transformers import AutoModel

    base = AutoModel.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    names = list(base.state_dict())
    eager = TransformersBackend(base, LAYER_IDS, torch.device("cpu"))
    batch = sequences([21, 6, 13], seed=4)
    expected = eager.capture(batch)
    eager.close()
    compiled = TransformersBackend(base, LAYER_IDS, torch.device("cpu"), "aot_eager")
    assert compiled.compiled and all("forward" in layer.__dict__ for layer in base.layers)
    got = compiled.capture(batch) + compiled.capture([batch[1]])
    for want, have in zip(expected + [expected[1]], got):
        for a, b in zip(want, have):
            torch.testing.assert_close(a.float(), b.float(), atol=1e-6, rtol=1e-2)
    assert list(base.state_dict()) == names
    compiled.close()


def test_a_failing_compile_names_no_compile(tiny_llama):
    from transformers import AutoModel

    from speculators.datagen.backends.transformers import uncompile_layers
    from speculators.errors import UserInputError

    def broken(gm, example_inputs):
        raise RuntimeError("no C compiler")

    base = AutoModel.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    backend = TransformersBackend(base, LAYER_IDS, torch.device("cpu"), broken)
    with pytest.raises(UserInputError, match="--no-compile") as info:
        backend.capture(sequences([7])[0:1])
    assert "no C compiler" in str(info.value)
    uncompile_layers(base.layers)
    assert all("forward" not in layer.__dict__ for layer in base.layers)
    backend.close()


@pytest.mark.parametrize(
    ("device", "no_compile", "expected"),
    [("cuda", False, "inductor"), ("cuda", True, None), ("cpu", False, None)],
)
def test_compiling_is_the_gpu_default_and_no_compile_turns_it_off(device, no_compile, expected):
    from speculators.config import DatagenConfig
    from speculators.datagen.backends.transformers import compile_backend

    config = DatagenConfig(target_model_path="m", train_data_path="sharegpt", no_compile=no_compile)
    assert compile_backend(config, torch.device(device)) == expected


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_inductor_compiled_layers_are_as_close_to_fp32_as_eager_bf16(tiny_llama):
    """On a GPU in bf16, fused kernels round differently: the yardstick is the fp32 eager
    capture, from which the compiled capture may be no further than the eager bf16 one."""
    from transformers import AutoModel

    cuda = torch.device("cuda")
    batch = sequences([37, 5, 20], seed=5)

    def run(dtype, backend_name):
        base = AutoModel.from_pretrained(tiny_llama, dtype=dtype).to(cuda).eval()
        backend = TransformersBackend(base, LAYER_IDS, cuda, backend_name)
        out = backend.capture(batch) + backend.capture([batch[0]])
        backend.close()
        return out

    reference, eager, compiled = (
        run(torch.float32, None),
        run(torch.bfloat16, None),
        run(torch.bfloat16, "inductor"),
    )
    for ref_s, eager_s, comp_s in zip(reference, eager, compiled):
        for r, e, c in zip(ref_s, eager_s, comp_s):
            assert c.shape == r.shape
            assert _rel_err(c, r) <= max(2 * _rel_err(e, r), 2e-2), (_rel_err(c, r), _rel_err(e, r))


def test_sliding_window_models_keep_transformers_mask():
    """Our mask is plain causal: a model with a sliding window (or sliding layers) must get
    transformers' own, and then batched still equals one by one beyond the window."""
    from transformers import LlamaConfig, MistralConfig, MistralModel

    from speculators.datagen.backends.transformers import attends_to_whole_prefix

    assert attends_to_whole_prefix(LlamaConfig())
    assert not attends_to_whole_prefix(MistralConfig(sliding_window=4096))
    assert not attends_to_whole_prefix(
        LlamaConfig(layer_types=["sliding_attention", "full_attention"], num_hidden_layers=2)
    )
    torch.manual_seed(0)
    config = MistralConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, sliding_window=8, head_dim=8,
    )  # fmt: skip
    model = MistralModel(config).eval()
    backend = TransformersBackend(model, [0, 2], torch.device("cpu"))
    assert not backend.prebuilt_mask
    batch = sequences([30, 11], seed=6)
    together = assert_batched_equals_one_by_one(backend, batch)
    # And the window matters here: the plain causal mask would give other states.
    backend.prebuilt_mask = True
    wrong = backend.capture(batch)
    assert not torch.allclose(wrong[0][1].float(), together[0][1].float(), atol=1e-3)
    backend.close()
