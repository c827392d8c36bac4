"""Channel MLPs and the MLP classifier head of the MetaFormer baselines."""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..kernels.ops import gelu_, linear, linear_relu, records_grad
from .activations import SquaredReLU, StarReLU, relu_square
from .reference import DualPath


def fold_star_relu(act: StarReLU, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``linear(act(h))`` as a linear layer applied to ``relu(h) ** 2``.

    ``W (s r + b) + c = (s W) r + (b W 1 + c)``: StarReLU's scale moves into the weight and its
    bias into the layer's bias, which saves two passes over the (large) hidden activation.
    Autograd reaches ``act.scale`` and ``act.bias`` through the folded tensors.
    """
    weight = linear.weight
    bias = act.bias * weight.sum(dim=1)
    if linear.bias is not None:
        bias = bias + linear.bias
    return weight * act.scale, bias


class Mlp(DualPath):
    """Two linear layers with StarReLU between them, no biases (MetaFormer ``Mlp``).

    The fast path uses the linear kernels chosen for its shape (``tokenmix.kernels``) and, with StarReLU, runs
    ``relu(fc1(x)) ** 2`` in place and folds StarReLU's scale and bias into ``fc2``
    (:func:`fold_star_relu`) unless dropout between the layers is active. LV-ViT uses this
    class with GELU and biases; in inference its GELU runs in place.
    """

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
        self.kernels = kernels.choose_linear(min(dim, hidden, out_features or dim))

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # 2-D, so the hidden tensor is no view: in place is safe
        k = self.kernels
        star = isinstance(self.act, StarReLU) and not (self.training and self.drop1.p > 0)
        if star and not records_grad(rows, self.fc1.weight, self.fc1.bias):
            h = linear_relu(rows, self.fc1.weight, self.fc1.bias, k["linear_relu"], k["linear"])
            weight, bias = fold_star_relu(self.act, self.fc2)
            return self.drop2(
                linear(h.square_(), weight, bias, k["linear"]).view(*x.shape[:-1], -1)
            )
        h = linear(rows, self.fc1.weight, self.fc1.bias, k["linear"])
        if star:
            h = relu_square(h, inplace=True)
            weight, bias = fold_star_relu(self.act, self.fc2)
        elif isinstance(self.act, nn.GELU) and not (torch.is_grad_enabled() and h.requires_grad):
            # inference: overwrite the hidden tensor instead of allocating a second one
            h = self.drop1(gelu_(h, self.act.approximate))
            weight, bias = self.fc2.weight, self.fc2.bias
        else:
            h = self.drop1(self.act(h))
            weight, bias = self.fc2.weight, self.fc2.bias
        return self.drop2(linear(h, weight, bias, k["linear"]).view(*x.shape[:-1], -1))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop1(x)
        x = self.fc2(x)
        return self.drop2(x)


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
