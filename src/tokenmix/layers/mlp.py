"""Channel MLPs and the MLP classifier head of the MetaFormer baselines."""

from __future__ import annotations

import torch
from torch import nn

from .activations import SquaredReLU, StarReLU


class Mlp(nn.Module):
    """Two linear layers with StarReLU between them, no biases (MetaFormer ``Mlp``)."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        out_features: int | None = None,
        drop_rate: float = 0.0,
        act_layer: type[nn.Module] = StarReLU,
        bias: bool = False,
    ) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden, out_features or dim, bias=bias)
        self.drop2 = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class MlpHead(nn.Module):
    """fc -> SquaredReLU -> LayerNorm(eps 1e-5) -> dropout -> fc, the official classifier head."""

    def __init__(
        self, dim: int, num_classes: int, mlp_ratio: float = 4.0, head_dropout: float = 0.0
    ) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = SquaredReLU()
        self.norm = nn.LayerNorm(hidden, eps=1e-5)
        self.head_dropout = nn.Dropout(head_dropout)
        self.fc2 = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.head_dropout(self.norm(self.act(self.fc1(x)))))


class Scale(nn.Module):
    """Per-channel learnable scale, used for res_scale (Shleifer et al., 2021)."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
