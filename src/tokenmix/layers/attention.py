"""The attention core of the fast path: ``softmax(q k^T * scale) v``.

``F.scaled_dot_product_attention`` (fused, memory-efficient) everywhere, except for bf16/fp16 on
CPU with a small score matrix: there PyTorch's CPU flash kernel runs its products without the
CPU's bf16 matrix units, and explicit batched products are about twice as fast (measured for
LV-ViT-S and CAFormer-S18 at 224: 2.8 ms vs 6.4 ms per layer, batch 8, one thread). Large score
matrices (high resolution) keep the fused kernel, which never materialises them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Largest score matrix (elements, batch x heads x queries x keys) computed explicitly:
# 32 M elements = 64 MiB in bf16, e.g. batch 8 x 10 heads x 640 x 640 tokens.
EXPLICIT_MAX_SCORES = 32 * 2**20


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, drop_rate: float = 0.0
) -> torch.Tensor:
    """Multi-head attention of ``[B, heads, N, d]`` tensors (pass ``drop_rate`` 0 in eval)."""
    scores = q.shape[0] * q.shape[1] * q.shape[-2] * k.shape[-2]
    if (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and scores <= EXPLICIT_MAX_SCORES
        and not torch.compiler.is_compiling()
    ):
        attn = torch.matmul(q, k.transpose(-2, -1)).mul_(scale).softmax(dim=-1)
        return torch.matmul(F.dropout(attn, drop_rate), v)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=drop_rate, scale=scale)
