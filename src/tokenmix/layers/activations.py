"""Activations of the MetaFormer baselines (Yu et al., "MetaFormer Baselines for Vision", 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StarReLU(nn.Module):
    """``scale * relu(x) ** 2 + bias`` with a learnable scalar scale and bias.

    The scalars keep the official shape ``[1]`` so that checkpoints load strictly.
    """

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(scale_value)))
        self.bias = nn.Parameter(torch.full((1,), float(bias_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(x).square() + self.bias


class SquaredReLU(nn.Module):
    """``relu(x) ** 2``, the activation of the MLP classifier head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()
