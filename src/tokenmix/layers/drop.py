"""Stochastic depth (Huang et al., 2016): drop a whole residual branch per sample."""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Zero the residual branch of a random subset of samples and rescale the rest."""

    def __init__(self, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop_rate = float(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_rate == 0.0:
            return x
        keep = 1.0 - self.drop_rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}"
