"""Training-time-test attention on packed rows: who a query of TTT step s may see.

At step s the query of row position i (document d) sees the step-0 keys of positions j <= i of
document d (the causal, same-document base prefix) and the keys of its own position i from steps
1..s (the diagonal blocks). Keys are laid out as [step 0 | step 1 | ... | step s], each T long.

Two implementations give the same numbers: a dense boolean mask (CPU, tests, reference) and flex
attention with a block-sparse mask (GPU; torch.compile'd so that masked blocks are skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, Literal

import torch
import torch.nn.functional as F

from speculators.models.eagle3 import QKV, repeat_kv

AttentionImpl = Literal["dense", "flex"]


def dense_ttt_mask(doc_ids_BT: torch.Tensor, step: int) -> torch.Tensor:
    """Boolean mask [B, 1, T, T * (step + 1)]: True where a query may attend."""
    t = doc_ids_BT.shape[1]
    pos = torch.arange(t, device=doc_ids_BT.device)
    causal_TT = pos[:, None] >= pos[None, :]
    same_doc_BTT = doc_ids_BT[:, :, None] == doc_ids_BT[:, None, :]
    base = same_doc_BTT & causal_TT
    diag = torch.eye(t, dtype=torch.bool, device=doc_ids_BT.device).expand_as(base)
    return torch.cat([base, *[diag] * step], dim=-1)[:, None]


@lru_cache(maxsize=1)
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_ttt_block_mask(doc_ids_BT: torch.Tensor, step: int) -> Any:
    """The same rule as `dense_ttt_mask`, as a flex-attention BlockMask."""
    from torch.nn.attention.flex_attention import create_block_mask

    b, t = doc_ids_BT.shape

    def mask_mod(bi: Any, h: Any, q: Any, kv: Any) -> Any:
        block, j = kv // t, kv % t
        base = (block == 0) & (doc_ids_BT[bi, q] == doc_ids_BT[bi, j]) & (j <= q)
        return base | ((block > 0) & (j == q))

    # On GPUs compiled: evaluated block by block, not materialised densely at T x (s+1)T.
    return create_block_mask(
        mask_mod, b, None, t, t * (step + 1), device=doc_ids_BT.device, _compile=doc_ids_BT.is_cuda
    )


class TTTAttention:
    """The KVContext of one training batch. Step 0 calls store the base keys of each layer;
    later calls (one per layer per step) append that step's diagonal keys.

    Token projections: step s at row position i reads token i+1+s, which is step 0's token at
    position i+s, so the first layer's projections of the token embeddings are computed at
    step 0 only and read shifted by s rows after (two thirds of that half of its products
    saved at 3 steps). Where i+1+s lies outside i's document, step s reads another document's
    token (or a wrapped one) where it used to read token 0: such a position is scored at no
    step from s on (its target lies outside the document too), and what it computes reaches
    no other position (its keys from step s on are diagonal: seen by itself alone), so the
    loss and every gradient are unchanged.
    """

    def __init__(self, doc_ids_BT: torch.Tensor, impl: AttentionImpl = "dense") -> None:
        self.doc_ids_BT = doc_ids_BT
        self.impl = impl
        self.keys: dict[int, list[torch.Tensor]] = {}
        self.values: dict[int, list[torch.Tensor]] = {}
        self._masks: dict[int, Any] = {}
        self._token_qkv: dict[int, QKV] = {}

    def _mask(self, step: int) -> Any:
        if step not in self._masks:
            build = dense_ttt_mask if self.impl == "dense" else flex_ttt_block_mask
            self._masks[step] = build(self.doc_ids_BT, step)
        return self._masks[step]

    def token_qkv(self, layer_idx: int, compute: Callable[[], QKV]) -> QKV:
        step = len(self.keys.get(layer_idx, ()))
        if step == 0:
            self._token_qkv[layer_idx] = compute()
        first = self._token_qkv[layer_idx]
        return first if step == 0 else tuple(_ShiftRows.apply(x, step) for x in first)  # type: ignore[return-value]

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        self.keys.setdefault(layer_idx, []).append(k)
        self.values.setdefault(layer_idx, []).append(v)
        step = len(self.keys[layer_idx]) - 1
        k_all = torch.cat(self.keys[layer_idx], dim=2)
        v_all = torch.cat(self.values[layer_idx], dim=2)
        if self.impl == "dense":
            nh = q.shape[1]
            return F.scaled_dot_product_attention(
                q, repeat_kv(k_all, nh), repeat_kv(v_all, nh), attn_mask=self._mask(step)
            )
        flex = _compiled_flex() if q.is_cuda else _eager_flex()
        return flex(q, k_all, v_all, block_mask=self._mask(step), enable_gqa=True)


class _ShiftRows(torch.autograd.Function):
    """x[:, i + n] at position i, wrapped (`x.roll(-n, dims=1)`) as two block copies each way:
    the same numbers, without roll's per-element index arithmetic (~1 ms per 8B step)."""

    @staticmethod
    def forward(ctx: Any, x_BTF: torch.Tensor, n: int) -> torch.Tensor:  # type: ignore[override]
        ctx.n = n
        return torch.cat([x_BTF[:, n:], x_BTF[:, :n]], dim=1)

    @staticmethod
    def backward(ctx: Any, grad_BTF: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        n = ctx.n
        return torch.cat([grad_BTF[:, -n:], grad_BTF[:, :-n]], dim=1), None


def _eager_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention
