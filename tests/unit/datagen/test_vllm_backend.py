"""The vllm backend's pure parts: engine arguments, the fused-residual sum, reassembly of vLLM's
flattened batches, request checks. No vLLM needed (nor faked); the parity test needs a GPU."""

from __future__ import annotations

import importlib
import importlib.util
import io
import shutil

import pytest
import torch

from speculators.artifacts.layer_ids import from_vllm_aux_layer_ids, to_vllm_aux_layer_ids
from speculators.config import DatagenConfig
from speculators.datagen.backends.vllm import (
    WORKER_EXTENSION,
    VllmBackend,
    engine_kwargs,
    match_requests,
    scratch_dir,
    split_steps,
    to_samples,
    vllm_version_supported,
)
from speculators.datagen.backends.vllm_worker import combine_layer_output


def settings(**overrides) -> DatagenConfig:
    values = {"target_model_path": "/models/llama", "train_data_path": "sharegpt", **overrides}
    return DatagenConfig(**values)


# ---- engine arguments -------------------------------------------------------------------------


def test_engine_kwargs_map_the_flags():
    kw = engine_kwargs(settings(tensor_parallel_size=4, gpu_memory_utilization=0.6))
    assert kw["model"] == "/models/llama"
    assert kw["max_model_len"] == 2048 + 1  # --seq-length default
    assert kw["tensor_parallel_size"] == 4
    assert kw["gpu_memory_utilization"] == 0.6
    assert kw["distributed_executor_backend"] == "mp"  # captures travel through local files
    assert "distributed_executor_backend" not in engine_kwargs(settings())


def test_engine_kwargs_admit_a_full_length_sample_prefilled_whole():
    s = settings(seq_length=4096, batch_size=16)
    kw = engine_kwargs(s)
    # vLLM refuses a prompt of max_model_len tokens: one position is left for the output token.
    assert kw["max_model_len"] == s.seq_length + 1
    # A whole batch of full-length prompts fits one step's token budget, so none is chunked.
    assert kw["max_num_batched_tokens"] >= s.batch_size * kw["max_model_len"]
    assert kw["max_num_seqs"] == s.batch_size <= kw["max_num_batched_tokens"]
    assert kw["enable_chunked_prefill"] is False
    assert kw["enable_prefix_caching"] is False  # a cached prefix would never be recomputed
    assert kw["enforce_eager"] is True  # Python hooks do not run inside CUDA graphs
    assert kw["async_scheduling"] is False


def test_worker_extension_is_importable_by_its_qualified_name():
    module, _, cls_name = WORKER_EXTENSION.rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    for method in ("speculators_install", "speculators_record", "speculators_collect"):
        assert callable(getattr(cls, method))


def test_scratch_dir_uses_shared_memory_only_when_it_has_room(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    assert scratch_dir(free // 4, shm=str(tmp_path)) == str(tmp_path)
    assert scratch_dir(free, shm=str(tmp_path)) is None  # room for one batch is not enough
    assert scratch_dir(1, shm=str(tmp_path / "absent")) is None


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_vllm_is_a_user_error_naming_the_install():
    from speculators.errors import UserInputError

    with pytest.raises(UserInputError, match=r"pip install 'speculators\[datagen\]'"):
        VllmBackend(settings(), [1, 2, 3, 5])


@pytest.mark.parametrize(
    "version, ok",
    [
        ("0.11.0", True),
        ("0.11.2", True),
        ("0.12.0+cu129", True),
        ("0.10.2", False),
        ("0.13.0", False),
        ("1.0.0", False),
        ("dev", False),
    ],
)
def test_supported_version_range(version, ok):
    assert vllm_version_supported(version) is ok


# ---- the fused residual and the layer-id convention -------------------------------------------


@pytest.fixture(scope="module")
def hf_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def _fused_residual_view(model, input_ids):
    """Run HF Llama and read each layer as vLLM returns it: (mlp output, residual stream
    before the MLP add), plus HF's hidden states and the tensor entering each layer."""
    layers = model.model.layers
    parts: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(len(layers))}
    handles = []
    for i, layer in enumerate(layers):
        handles += [
            layer.post_attention_layernorm.register_forward_hook(
                lambda m, a, o, i=i: parts[i].__setitem__("residual", a[0].clone())
            ),
            layer.mlp.register_forward_hook(
                lambda m, a, o, i=i: parts[i].__setitem__("hidden", o.clone())
            ),
            layer.register_forward_pre_hook(
                lambda m, a, kw, i=i: parts[i].__setitem__(
                    "entering", (a[0] if a else kw["hidden_states"]).clone()
                ),
                with_kwargs=True,
            ),
            layer.register_forward_hook(
                lambda m, a, o, i=i: parts[i].__setitem__(
                    "output", (o[0] if isinstance(o, tuple) else o).clone()
                )
            ),
        ]
    with torch.no_grad():
        hf_states = model(input_ids, output_hidden_states=True).hidden_states
    for h in handles:
        h.remove()
    return parts, hf_states


def test_layer_output_is_hidden_plus_residual(hf_llama):
    ids = torch.randint(0, 64, (1, 9))
    parts, hf_states = _fused_residual_view(hf_llama, ids)
    n = len(parts)
    for i in range(n):
        ours = combine_layer_output((parts[i]["hidden"], parts[i]["residual"]))
        # id i = HF hidden_states[i + 1], except the last layer, stored before the final norm
        expected = parts[i]["output"] if i == n - 1 else hf_states[i + 1]
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    # Neither half alone is the layer output.
    assert not torch.allclose(parts[1]["hidden"], hf_states[2], atol=1e-3)
    assert not torch.allclose(parts[1]["residual"], hf_states[2], atol=1e-3)


def test_our_id_is_the_tensor_entering_vllm_aux_layer(hf_llama):
    ids = torch.randint(0, 64, (1, 7))
    parts, _ = _fused_residual_view(hf_llama, ids)
    ours = [0, 2, 3, 4]  # aux layers, then the last layer
    vllm_aux = to_vllm_aux_layer_ids(ours)
    assert vllm_aux == [1, 3, 4]
    assert from_vllm_aux_layer_ids(vllm_aux) == ours[:-1]
    for our_id, vllm_id in zip(ours, vllm_aux):
        captured = combine_layer_output((parts[our_id]["hidden"], parts[our_id]["residual"]))
        torch.testing.assert_close(captured, parts[vllm_id]["entering"], rtol=1e-5, atol=1e-6)
        # and not its neighbour (the off-by-one that ruins a served draft)
        assert not torch.allclose(captured, parts[our_id]["entering"], atol=1e-3)


def test_combined_output_survives_the_next_layers_in_place_norm():
    hidden, residual = torch.randn(4, 8), torch.randn(4, 8)
    expected = hidden + residual
    out = combine_layer_output((hidden, residual))
    residual += hidden  # what vLLM's fused add+RMSNorm does to the tensors afterwards
    hidden.zero_()
    torch.testing.assert_close(out, expected)


def test_combine_without_residual_or_tuple():
    x = torch.randn(3, 4)
    assert combine_layer_output((x, None)) is x
    assert combine_layer_output(x) is x


# ---- reassembly of the flattened batch ---------------------------------------------------------

NUM_LAYERS, HIDDEN = 3, 5


def _requests(lengths: dict[str, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompts = {r: torch.randint(0, 1000, (n,), generator=g).tolist() for r, n in lengths.items()}
    states = {r: torch.randn(NUM_LAYERS, n, HIDDEN, generator=g) for r, n in lengths.items()}
    return prompts, states


def _step(order, prompts, states, padding=0):
    """A step as vLLM's runner lays it out: requests' whole prompts back to back."""
    return {
        "req_ids": list(order),
        "positions": torch.cat(
            [torch.arange(len(prompts[r])) for r in order]
            + [torch.zeros(padding, dtype=torch.long)]
        ),
        "input_ids": torch.cat(
            [torch.tensor(prompts[r]) for r in order] + [torch.zeros(padding, dtype=torch.long)]
        ),
        "hidden": torch.cat(
            [states[r] for r in order] + [torch.randn(NUM_LAYERS, padding, HIDDEN)], dim=1
        ),
    }


def test_split_steps_recovers_each_request_across_steps_and_orders():
    prompts, states = _requests({"0": 5, "1": 1, "2": 8, "3": 3})
    steps = [_step(["2", "0"], prompts, states), _step(["3", "1"], prompts, states, padding=4)]
    out = split_steps(steps, prompts)
    assert set(out) == set(prompts)
    for r in prompts:
        assert torch.equal(out[r], states[r])


def test_split_steps_keeps_the_last_capture_of_a_recomputed_request():
    prompts, states = _requests({"0": 4, "1": 2})
    _, stale = _requests({"0": 4}, seed=1)
    steps = [_step(["0"], prompts, {"0": stale["0"]}), _step(["1", "0"], prompts, states)]
    assert torch.equal(split_steps(steps, prompts)["0"], states["0"])


def test_split_steps_refuses_a_chunked_prompt():
    prompts, states = _requests({"0": 6, "1": 3})
    step = _step(["0", "1"], prompts, states)
    # request 0's second chunk (positions 3..5) as chunked prefill would schedule it
    chunk = {k: v[..., 3:6] if k != "req_ids" else ["0"] for k, v in step.items()}
    with pytest.raises(RuntimeError, match="not prefilled whole"):
        split_steps([chunk], prompts)


def test_split_steps_refuses_other_token_ids():
    prompts, states = _requests({"0": 4, "1": 3})
    step = _step(["0", "1"], prompts, states)
    step["input_ids"][5] += 1
    with pytest.raises(RuntimeError, match="other token ids"):
        split_steps([step], prompts)


def test_split_steps_refuses_foreign_missing_and_short_steps():
    prompts, states = _requests({"0": 4, "1": 3})
    with pytest.raises(RuntimeError, match="not ours"):
        split_steps([_step(["0", "1"], prompts, states)], {"0": prompts["0"]})
    with pytest.raises(RuntimeError, match=r"no hidden states for requests \['1'\]"):
        split_steps([_step(["0"], prompts, states)], prompts)
    short = _step(["0", "1"], prompts, states)
    short = {k: v[..., :6] if k != "req_ids" else v for k, v in short.items()}
    with pytest.raises(RuntimeError):
        split_steps([short], prompts)


def test_match_requests_checks_every_prompt():
    batch = [[5, 6, 7], [8], [9, 10]]
    returned = [("10", [5, 6, 7]), ("11", [8]), ("12", [9, 10])]
    assert match_requests(returned, batch) == {"10": 0, "11": 1, "12": 2}
    with pytest.raises(RuntimeError, match="differ"):
        match_requests([("10", [5, 6, 7]), ("11", [9, 10]), ("12", [8])], batch)
    with pytest.raises(RuntimeError, match="2 outputs for 3 prompts"):
        match_requests(returned[:2], batch)


def test_to_samples_orders_by_batch_and_stores_compact_bf16():
    states = {"a": torch.randn(NUM_LAYERS, 4, HIDDEN), "b": torch.randn(NUM_LAYERS, 2, HIDDEN)}
    step = torch.cat([states["b"], states["a"]], dim=1)  # one big step tensor, sliced per request
    per_request = {"b": step[:, :2], "a": step[:, 2:]}
    samples = to_samples(per_request, {"a": 0, "b": 1})
    assert [len(s) for s in samples] == [NUM_LAYERS, NUM_LAYERS]
    for i, r in enumerate(["a", "b"]):
        for layer in range(NUM_LAYERS):
            t = samples[i][layer]
            assert t.dtype == torch.bfloat16 and t.device.type == "cpu"
            torch.testing.assert_close(t, states[r][layer].to(torch.bfloat16))


def test_a_saved_sample_holds_its_own_rows_not_the_whole_step():
    step = torch.randn(NUM_LAYERS, 2 + 500, 64, dtype=torch.bfloat16)  # short beside long
    samples = to_samples({"short": step[:, :2], "long": step[:, 2:]}, {"short": 0, "long": 1})
    buf = io.BytesIO()
    torch.save(samples[0], buf)
    assert samples[0][0].untyped_storage().nbytes() == 2 * 64 * 2
    assert buf.tell() < 10_000  # the whole step would be ~190 kB
