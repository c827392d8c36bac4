"""Normalisation layers with the official parameter layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .reference import DualPath, official_layer_norm


class LayerNormNoBias(DualPath):
    """LayerNorm over the last dimension with a weight and no bias.

    The MetaFormer baselines use this (``LayerNormGeneral(bias=False)`` in the official code,
    eps 1e-6) in every block and around every downsampling conv. The official version takes
    eight element-wise passes (mean, subtract, square, mean, add, sqrt, divide, scale);
    ``F.layer_norm`` computes the same function in one fused kernel.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, None, self.eps)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        return official_layer_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
