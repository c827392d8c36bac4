"""Multi-head self-attention of CAFormer (sail-sg/metaformer) and LV-ViT (TokenLabeling).

One class serves both: tokens as ``[B, N, C]`` or channels-last ``[B, H, W, C]``; the two
official codes differ only in biases (MetaFormer none, LV-ViT a projection bias) and in where
the scale is applied (MetaFormer after ``q k^T``, LV-ViT to ``q``), which the reference path
follows (``query_scaled``). State-dict keys are ``qkv.*`` and ``proj.*`` in both.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..kernels.ops import attention, linear
from .reference import DualPath, official_attention, official_attention_query_scaled


class Attention(DualPath):
    """Multi-head self-attention over all tokens (CAFormer's: head_dim 32, no biases).

    The fast path uses :func:`tokenmix.kernels.ops.attention` (fused SDPA, or bf16 batched
    products on CPU where those are faster); the reference path is the official explicit
    ``softmax(q k^T * scale) v``.
    """

    def __init__(
        self,
        dim: int,
        size: tuple[int, int] | None = None,
        head_dim: int = 32,
        num_heads: int | None = None,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        qk_scale: float | None = None,
        query_scaled: bool = False,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.scale = qk_scale or head_dim**-0.5
        self.query_scaled = query_scaled
        self.num_heads = num_heads or max(dim // head_dim, 1)
        inner = self.num_heads * head_dim
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop_rate)
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop_rate)
        self.kernels = {
            **kernels.choose_linear(min(dim, inner)),
            "attention": kernels.choose("attention"),
        }

    def _qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = qkv.shape[0]
        qkv = qkv.reshape(b, -1, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        kern = self.kernels
        q, k, v = self._qkv(linear(x, self.qkv.weight, self.qkv.bias, kern["linear"]))
        drop = self.attn_drop.p if self.training else 0.0
        y = attention(q, k, v, self.scale, drop, kern["attention"])
        y = y.transpose(1, 2).reshape(*x.shape[:-1], -1)
        return self.proj_drop(linear(y, self.proj.weight, self.proj.bias, kern["linear"]))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(self.qkv(x))
        core = official_attention_query_scaled if self.query_scaled else official_attention
        y = core(q, k, v, self.scale, self.attn_drop.p if self.training else 0.0)
        y = y.transpose(1, 2).reshape(*x.shape[:-1], -1)
        return self.proj_drop(self.proj(y))
