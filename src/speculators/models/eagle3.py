"""The EAGLE-3 draft model (SPEC §3) as a plain nn.Module; no training code lives here.

Parameter names are exactly those vLLM loads (no `model.` prefix): `embed_tokens`, `fc`,
`layers.{i}.*`, `norm`, `lm_head`, buffers `d2t`, `t2d`.

Attention is owned here but *what* a query may see is decided by a `KVContext`: the decoding
cache below (sequential, causal, used by `speculators eval`) or the training-time-test context in
`speculators.train.attention` (packed documents, diagonal steps). Both receive rotated q/k/v.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from speculators.artifacts.checkpoint import WEIGHTS_FILE, load_draft_config, read_weights
from speculators.errors import UserInputError

T = TypeVar("T")

# Verifier config keys the draft's Llama layers inherit (whatever the verifier's architecture).
_INHERITED_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "max_position_embeddings",
    "vocab_size",
    "hidden_act",
    "rope_parameters",
    "rope_theta",
    "rope_scaling",
)


def draft_layer_config(verifier_config: Any, num_layers: int) -> LlamaConfig:
    """The Llama config of the draft's decoder layers, derived from the verifier's text config."""
    found: dict[str, Any] = {k: getattr(verifier_config, k, None) for k in _INHERITED_KEYS}
    values = {k: v for k, v in found.items() if v is not None}
    if "head_dim" not in values:
        values["head_dim"] = values["hidden_size"] // values["num_attention_heads"]
    config = LlamaConfig(
        **values,
        num_hidden_layers=num_layers,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
    )
    config.architectures = ["LlamaForCausalLM"]
    return config


# The first layer's (q, k, v) projections of the token embeddings, each [B, T, out], not rotated.
QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class KVContext(Protocol):
    """Decides which keys a query sees (gets rotated q [B, nh, T, D], k/v [B, nkv, T, D]), and
    where the first layer's token projections of a call come from."""

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Return the attention output [B, nh, T, D]."""
        ...

    def token_qkv(self, layer_idx: int, compute: Callable[[], QKV]) -> QKV:
        """This call's token projections: `compute()`, or the same numbers known another way
        (training-time test shifts the first step's)."""
        ...


def repeat_kv(x_BHTD: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Expand grouped key/value heads to one per query head."""
    rep = num_heads // x_BHTD.shape[1]
    return x_BHTD if rep == 1 else x_BHTD.repeat_interleave(rep, dim=1)


class DecodeCache:
    """A growing KV cache for incremental decoding: new positions see every cached position
    and, among themselves, causally. `truncate(n)` drops entries after the first n (rejected
    draft tokens)."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return 0 if not self.keys else self.keys[0].shape[2]

    def truncate(self, length: int) -> None:
        for store in (self.keys, self.values):
            for i in store:
                store[i] = store[i][:, :, :length]

    def token_qkv(self, layer_idx: int, compute: Callable[[], QKV]) -> QKV:
        return compute()

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        if layer_idx in self.keys:
            k = torch.cat([self.keys[layer_idx], k], dim=2)
            v = torch.cat([self.values[layer_idx], v], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = k, v
        num_new, num_all = q.shape[2], k.shape[2]
        q_pos = torch.arange(num_all - num_new, num_all, device=q.device)
        mask_TS = q_pos[:, None] >= torch.arange(num_all, device=q.device)[None, :]
        nh = q.shape[1]
        return F.scaled_dot_product_attention(
            q, repeat_kv(k, nh), repeat_kv(v, nh), attn_mask=mask_TS
        )


class Eagle3Attention(nn.Module):
    """Llama attention whose q/k/v take `input_size` features (2H in the first draft layer)."""

    def __init__(self, config: LlamaConfig, layer_idx: int, input_size: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = int(config.num_attention_heads)  # type: ignore[arg-type]
        self.num_kv_heads = int(config.num_key_value_heads)  # type: ignore[arg-type]
        self.head_dim = int(config.head_dim)  # type: ignore[arg-type]
        self.q_proj = nn.Linear(input_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(input_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(input_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def project_first(self, x_BTE: torch.Tensor) -> QKV:
        """(q, k, v) projections [B, T, out] of the input's first E features alone (the fused
        layer's embedding half), not rotated."""
        e = x_BTE.shape[-1]
        return tuple(F.linear(x_BTE, p.weight[:, :e]) for p in self._projections())  # type: ignore[return-value]

    def qkv(
        self,
        x_BTI: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        first: QKV | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected, rotated q [B, nh, T, D] and k, v [B, nkv, T, D]. `x` holds the input's
        last features (all of them without `first`); `first`: `project_first` of the rest."""
        b, t, n = x_BTI.shape
        skip = self.q_proj.in_features - n
        q, k, v = (F.linear(x_BTI, p.weight[:, skip:]) for p in self._projections())
        if first is not None:
            q, k, v = q + first[0], k + first[1], v + first[2]
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *cos_sin)
        return q, k, v

    def _projections(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        return self.q_proj, self.k_proj, self.v_proj

    def out(self, attn_BHTD: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = attn_BHTD.shape
        return self.o_proj(attn_BHTD.transpose(1, 2).reshape(b, t, -1))

    def forward(
        self, x_BTI: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], kv: KVContext
    ) -> torch.Tensor:
        return self.out(kv.attend(self.layer_idx, *self.qkv(x_BTI, cos_sin)))


class Eagle3DecoderLayer(nn.Module):
    """A Llama decoder layer. The first one (`fused_input`) attends over
    [input_layernorm(embedding), hidden_norm(hidden)] and, as `norm_before_residual` says,
    uses the normalised hidden state as its residual."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.fused_input = layer_idx == 0
        self.self_attn = Eagle3Attention(config, layer_idx, 2 * h if self.fused_input else h)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
        if self.fused_input:
            self.hidden_norm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(h, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_BTH: torch.Tensor,
        embeds_BTH: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv: KVContext,
    ) -> torch.Tensor:
        i = self.self_attn.layer_idx
        first = kv.token_qkv(i, lambda: self.token_qkv(embeds_BTH)) if self.fused_input else None
        q, k, v, residual = self.before_attention(hidden_BTH, first, cos_sin)
        return self.after_attention(kv.attend(i, q, k, v), residual)

    # The layer in pure pieces around the (stateful) context calls, so that each can be
    # compiled on its own: training fuses their element-wise work (norms, rotary, SiLU).
    def token_qkv(self, embeds_BTH: torch.Tensor) -> QKV:
        """The fused layer's (q, k, v) projections of its input's embedding half: the only
        part of it that depends on the tokens alone."""
        return self.self_attn.project_first(self.input_layernorm(embeds_BTH))

    def before_attention(
        self,
        hidden_BTH: torch.Tensor,
        token_qkv: QKV | None,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v, residual) of this layer's input; the fused layer's embedding half comes
        projected (`token_qkv`)."""
        if self.fused_input:
            residual = self.hidden_norm(hidden_BTH)
            return (*self.self_attn.qkv(residual, cos_sin, token_qkv), residual)
        return (*self.self_attn.qkv(self.input_layernorm(hidden_BTH), cos_sin), hidden_BTH)

    def after_attention(self, attn_BHTD: torch.Tensor, residual_BTH: torch.Tensor) -> torch.Tensor:
        residual = residual_BTH + self.self_attn.out(attn_BHTD)
        return residual + self.mlp(self.post_attention_layernorm(residual))


class Eagle3Draft(nn.Module):
    """The draft: fuse k verifier layers with `fc`, run the decoder layers, predict over Vd.

    One call of `forward` is one draft step for a block of positions; training-time test calls
    it once per step with its own previous output as `hidden`.
    """

    d2t: torch.Tensor  # long [Vd]: target id = draft id + d2t[draft id]
    t2d: torch.Tensor  # bool [V]: True for target ids in the draft vocab

    def __init__(
        self,
        layer_config: LlamaConfig,
        draft_vocab_size: int,
        num_aux_layers: int = 3,
        target_hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        h, vocab = layer_config.hidden_size, layer_config.vocab_size
        self.config = layer_config
        self.draft_vocab_size = draft_vocab_size
        self.target_hidden_size = target_hidden_size or h
        self.embed_tokens = nn.Embedding(vocab, h)
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = nn.Linear(num_aux_layers * self.target_hidden_size, h, bias=False)
        self.layers = nn.ModuleList(
            Eagle3DecoderLayer(layer_config, i) for i in range(layer_config.num_hidden_layers)
        )
        self.norm = LlamaRMSNorm(h, eps=layer_config.rms_norm_eps)
        self.lm_head = nn.Linear(h, draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(vocab, dtype=torch.bool))
        self.rotary_emb = LlamaRotaryEmbedding(layer_config)
        self.reset_parameters(layer_config.initializer_range)

    @classmethod
    def from_checkpoint(
        cls, checkpoint_dir: Path, device: str | torch.device = "cpu"
    ) -> Eagle3Draft:
        """A checkpoint of `speculators train` (artifacts/checkpoint.py) as a draft: fp32, eval."""
        config = load_draft_config(checkpoint_dir)
        model = cls(
            LlamaConfig(**config["transformer_layer_config"]),
            draft_vocab_size=config["draft_vocab_size"],
            num_aux_layers=len(config["eagle_aux_hidden_state_layer_ids"]),
            target_hidden_size=config.get("target_hidden_size"),
        )
        state = read_weights(checkpoint_dir, config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserInputError(
                f"{Path(checkpoint_dir) / WEIGHTS_FILE} does not match its config.json (missing "
                f"{missing[:4]}, unexpected {unexpected[:4]}). The checkpoint is damaged or from "
                "another tool."
            )
        return model.to(device).eval()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Llama's init: normal(0, std) linears, unit norms (embeddings come from the verifier)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
            elif isinstance(module, LlamaRMSNorm):
                module.weight.fill_(1.0)

    @torch.no_grad()
    def init_from_verifier(
        self, embed_VH: torch.Tensor, lm_head_VH: torch.Tensor, d2t: torch.Tensor, t2d: torch.Tensor
    ) -> None:
        """Copy the verifier's embeddings and the lm_head rows of the draft vocab; set d2t/t2d."""
        self.embed_tokens.weight.copy_(embed_VH)
        self.lm_head.weight.copy_(lm_head_VH[t2d.to(lm_head_VH.device)])
        self.d2t.copy_(d2t)
        self.t2d.copy_(t2d)

    def fuse(self, aux_hidden_BTK: torch.Tensor) -> torch.Tensor:
        """Concatenated aux hidden states [..., k*H] -> the draft's input hidden state [..., H]."""
        return self.fc(aux_hidden_BTK)

    def forward(
        self,
        input_ids_BT: torch.Tensor,
        hidden_BTH: torch.Tensor,
        position_ids_BT: torch.Tensor,
        kv: KVContext,
    ) -> torch.Tensor:
        """One draft step: (token ids, fused or own previous hidden, positions) -> the pre-norm
        output hidden state [B, T, H], which is also the next step's `hidden`."""
        embeds = self.embed_tokens(input_ids_BT).to(hidden_BTH.dtype)
        cos_sin = self.rotary_emb(hidden_BTH, position_ids_BT)
        for layer in self.layers:
            hidden_BTH = layer(hidden_BTH, embeds, cos_sin, kv)
        return hidden_BTH

    def logits(self, hidden_BTH: torch.Tensor) -> torch.Tensor:
        """Draft logits over the draft vocab [B, T, Vd] from `forward`'s output."""
        return self.lm_head(self.norm(hidden_BTH))

    def head(self, hidden_BTH: torch.Tensor, apply: Callable[[torch.Tensor, torch.Tensor], T]) -> T:
        """`apply(norm(hidden), lm_head.weight)`: the lm_head fused with whatever consumes its
        logits (training's loss never holds all of them). A method, so that sharding wrappers
        can gather the parameters around it as around `forward`."""
        return apply(self.norm(hidden_BTH), self.lm_head.weight)

    def step(
        self,
        input_ids_BT: torch.Tensor,
        hidden_BTH: torch.Tensor,
        position_ids_BT: torch.Tensor,
        cache: DecodeCache,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Incremental decoding: (draft logits [B, T, Vd], new hidden [B, T, H]); appends to
        `cache`. `hidden` is `fuse(aux)` for verified positions or a previous step's output."""
        out = self.forward(input_ids_BT, hidden_BTH, position_ids_BT, cache)
        return self.logits(out), out

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Draft vocab ids -> verifier vocab ids (target = draft + d2t[draft])."""
        return draft_ids + self.d2t[draft_ids]


def layer_config_dict(config: LlamaConfig) -> dict[str, Any]:
    """`transformer_layer_config` for config.json. Adds the legacy `rope_theta`/`rope_scaling`
    keys next to `rope_parameters` so that readers on older transformers see the same rope."""
    out = config.to_dict()
    for key in ("id2label", "label2id", "_name_or_path", "output_attentions", "return_dict"):
        out.pop(key, None)
    out["dtype"] = out["torch_dtype"] = "bfloat16"  # the saved weights' dtype, both spellings
    rope = out.get("rope_parameters")
    if isinstance(rope, dict):
        out.setdefault("rope_theta", rope.get("rope_theta"))
        if rope.get("rope_type", "default") != "default":
            out.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    return out
