"""The draft module and its checkpoint: names and shapes per SPEC §3, config.json, loading."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from transformers import LlamaConfig

from speculators.artifacts.checkpoint import (
    find_latest_complete_checkpoint,
    load_draft_config,
    save_checkpoint,
    speculators_config,
)
from speculators.artifacts.layer_ids import to_vllm_aux_layer_ids
from speculators.models.eagle3 import (
    DecodeCache,
    Eagle3Draft,
    draft_layer_config,
    layer_config_dict,
)

H, V, VD, NH, NKV, HD, FF = 32, 100, 24, 4, 2, 8, 64


def verifier_config() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=H,
        intermediate_size=FF,
        num_attention_heads=NH,
        num_key_value_heads=NKV,
        vocab_size=V,
        num_hidden_layers=6,
    )


def expected_shapes(num_layers: int) -> dict[str, tuple[int, ...]]:
    """SPEC §3 written out by hand: the names vLLM loads and the shapes they must have."""
    out = {
        "embed_tokens.weight": (V, H),
        "fc.weight": (H, 3 * H),
        "norm.weight": (H,),
        "lm_head.weight": (VD, H),
        "d2t": (VD,),
        "t2d": (V,),
    }
    for i in range(num_layers):
        qkv_in = 2 * H if i == 0 else H
        p = f"layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (NH * HD, qkv_in),
            p + "self_attn.k_proj.weight": (NKV * HD, qkv_in),
            p + "self_attn.v_proj.weight": (NKV * HD, qkv_in),
            p + "self_attn.o_proj.weight": (H, NH * HD),
            p + "mlp.gate_proj.weight": (FF, H),
            p + "mlp.up_proj.weight": (FF, H),
            p + "mlp.down_proj.weight": (H, FF),
            p + "input_layernorm.weight": (H,),
            p + "post_attention_layernorm.weight": (H,),
        }
    out["layers.0.hidden_norm.weight"] = (H,)
    return out


def save_tiny(tmp_path, num_layers=1, layer_ids=(1, 2, 3, 5), draft_vocab=VD):
    layer_config = draft_layer_config(verifier_config(), num_layers)
    model = Eagle3Draft(layer_config, draft_vocab, num_aux_layers=len(layer_ids) - 1)
    config = speculators_config(
        transformer_layer_config=layer_config_dict(layer_config),
        draft_vocab_size=draft_vocab,
        target_hidden_size=H,
        vllm_aux_layer_ids=to_vllm_aux_layer_ids(list(layer_ids)),
        verifier_name_or_path="some/verifier",
        verifier_architectures=["LlamaForCausalLM"],
        speculative_tokens=3,
        speculators_version="0.1.0",
    )
    path = save_checkpoint(
        tmp_path / "0", model_state=model.state_dict(), config=config, training_state={"epoch": 0}
    )
    return model, path


def test_checkpoint_names_shapes_and_dtypes_match_spec(tmp_path):
    for num_layers in (1, 2):
        _, path = save_tiny(tmp_path / str(num_layers), num_layers)
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            names = list(f.keys())  # noqa: SIM118 (safe_open is not a dict)
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in names}
            dtypes = {k: f.get_tensor(k).dtype for k in names}
        assert shapes == expected_shapes(num_layers)
        assert dtypes.pop("d2t") == torch.int64 and dtypes.pop("t2d") == torch.bool
        assert set(dtypes.values()) == {torch.bfloat16}


def test_config_json_is_the_speculators_format_with_vllm_layer_ids(tmp_path):
    _, path = save_tiny(tmp_path, layer_ids=(2, 16, 29, 31))
    config = json.loads((path / "config.json").read_text())
    # Our ids [2, 16, 29] (+ last 31) are vLLM's [3, 17, 30]: the layer each tensor enters.
    assert config["eagle_aux_hidden_state_layer_ids"] == [3, 17, 30]
    assert config["architectures"] == ["Eagle3Speculator"]
    assert config["speculators_model_type"] == "eagle3"
    assert config["norm_before_residual"] is True
    assert config["draft_vocab_size"] == VD and config["target_hidden_size"] == H
    method = config["speculators_config"]["proposal_methods"][0]
    assert method == {
        "proposal_type": "greedy",
        "speculative_tokens": 3,
        "verifier_accept_k": 1,
        "accept_tolerance": 0.0,
    }
    assert config["speculators_config"]["verifier"]["name_or_path"] == "some/verifier"
    layer = config["transformer_layer_config"]
    assert (layer["hidden_size"], layer["num_hidden_layers"], layer["vocab_size"]) == (H, 1, V)
    assert layer["head_dim"] == HD and layer["num_key_value_heads"] == NKV
    # vLLM sizes fc from this key and assumes 3 without it
    assert layer["num_aux_hidden_states"] == 3


def test_a_four_aux_layer_draft_says_so_for_vllm(tmp_path):
    model, path = save_tiny(tmp_path, layer_ids=(2, 9, 16, 27, 29))
    config = json.loads((path / "config.json").read_text())
    assert config["transformer_layer_config"]["num_aux_hidden_states"] == 4
    assert config["eagle_aux_hidden_state_layer_ids"] == [3, 10, 17, 28]
    assert model.fc.weight.shape == (H, 4 * H)
    loaded = Eagle3Draft.from_checkpoint(path)
    assert loaded.fc.weight.shape == (H, 4 * H)


def test_a_full_vocab_draft_is_saved_without_d2t_and_t2d(tmp_path):
    """vLLM >= 0.33 has no d2t parameter when the draft vocab is the whole target vocab and
    refuses a checkpoint that carries one; our loader restores the identity mapping."""
    model, path = save_tiny(tmp_path, draft_vocab=V)
    model.t2d.fill_(True)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert "d2t" not in f.keys() and "t2d" not in f.keys()  # noqa: SIM118
        assert tuple(f.get_slice("lm_head.weight").get_shape()) == (V, H)
    loaded = Eagle3Draft.from_checkpoint(path)
    assert torch.equal(loaded.d2t, torch.zeros(V, dtype=torch.long))
    assert bool(loaded.t2d.all()) and loaded.t2d.shape == (V,)
    _, subset = save_tiny(tmp_path / "subset")
    with safe_open(str(subset / "model.safetensors"), framework="pt") as f:
        assert {"d2t", "t2d"} <= set(f.keys())  # noqa: SIM118


def test_load_draft_round_trips_weights_and_config(tmp_path):
    model, path = save_tiny(tmp_path, num_layers=2)
    loaded, config = Eagle3Draft.from_checkpoint(path), load_draft_config(path)
    assert config == json.loads((path / "config.json").read_text())
    assert len(loaded.layers) == 2
    for name, tensor in model.state_dict().items():
        expected = tensor.to(torch.bfloat16).float() if tensor.is_floating_point() else tensor
        assert torch.equal(loaded.state_dict()[name], expected), name


def test_incomplete_checkpoint_is_never_the_latest(tmp_path):
    _, path = save_tiny(tmp_path)
    # A run killed while writing epoch 1 leaves only a hidden temp dir; one killed by another
    # tool might leave a dir without training_state.json. Neither counts.
    (tmp_path / ".tmp-1.abc").mkdir()
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "model.safetensors").write_bytes(b"partial")
    assert find_latest_complete_checkpoint(tmp_path) == path


def test_incremental_decoding_matches_one_causal_pass():
    torch.manual_seed(0)
    model = Eagle3Draft(draft_layer_config(verifier_config(), 2), VD).eval()
    ids = torch.randint(0, V, (1, 7))
    hidden = model.fuse(torch.randn(1, 7, 3 * H))
    pos = torch.arange(7)[None]
    full, _ = model.step(ids, hidden, pos, DecodeCache())
    cache = DecodeCache()
    first, _ = model.step(ids[:, :4], hidden[:, :4], pos[:, :4], cache)
    rest = [
        model.step(ids[:, i : i + 1], hidden[:, i : i + 1], pos[:, i : i + 1], cache)[0]
        for i in range(4, 7)
    ]
    assert len(cache) == 7
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, atol=1e-5, rtol=1e-5)
    cache.truncate(5)
    assert len(cache) == 5


def test_single_position_forward_matches_vllm_semantics_written_by_hand():
    """With one position attention returns v, so the first layer can be written out plainly:
    residual = hidden_norm(h) (norm_before_residual), q/k/v over [input_layernorm(e), that]."""
    torch.manual_seed(1)
    model = Eagle3Draft(draft_layer_config(verifier_config(), 1), VD).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    w = {k: v.detach() for k, v in model.state_dict().items()}
    eps = model.config.rms_norm_eps

    def rms(x, weight):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight

    token = torch.tensor([[7]])
    aux = torch.randn(1, 1, 3 * H)
    h = aux @ w["fc.weight"].T
    e = w["embed_tokens.weight"][7]
    p = "layers.0."
    normed_h = rms(h, w[p + "hidden_norm.weight"])
    x = torch.cat([rms(e, w[p + "input_layernorm.weight"]), normed_h[0, 0]])
    v = (w[p + "self_attn.v_proj.weight"] @ x).view(NKV, HD).repeat_interleave(NH // NKV, 0)
    r = normed_h[0, 0] + w[p + "self_attn.o_proj.weight"] @ v.flatten()
    m = rms(r, w[p + "post_attention_layernorm.weight"])
    gate, up = w[p + "mlp.gate_proj.weight"] @ m, w[p + "mlp.up_proj.weight"] @ m
    out = r + w[p + "mlp.down_proj.weight"] @ (torch.nn.functional.silu(gate) * up)
    logits = w["lm_head.weight"] @ rms(out, w["norm.weight"])

    got_logits, got_hidden = model.step(
        token, model.fuse(aux), torch.zeros(1, 1, dtype=torch.long), DecodeCache()
    )
    torch.testing.assert_close(got_hidden[0, 0], out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_logits[0, 0], logits, atol=1e-4, rtol=1e-4)
