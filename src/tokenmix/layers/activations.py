"""Activations of the MetaFormer baselines (Yu et al., "MetaFormer Baselines for Vision", 2022).

StarReLU is ``scale * relu(x) ** 2 + bias``. The official code runs it as four element-wise
passes over new tensors, and because ``scale`` and ``bias`` are 1-element float32 tensors, type
promotion makes its output float32 even under bf16 autocast. The fast path
(:func:`star_relu`) runs ``relu`` and the square in place and the affine part as ``mul_`` then
``add_``, in place too when the caller owns the input and no gradient is needed; inside an
MLP the affine part disappears altogether into the next linear layer (see ``mlp.py``).
(Not ``addcmul``: with 1-element operands it takes a broadcasting path 5-9x slower than the two
in-place passes, measured on AVX2 and AVX-512 CPUs with torch 2.13.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.ops import linear, linear_relu, records_grad
from .reference import DualPath, official_star_relu


class _ReluSquare(torch.autograd.Function):
    """``relu(x) ** 2`` that keeps only its output for backward.

    ``d/dx relu(x)^2 = 2 relu(x) = 2 sqrt(y)``, so the output (which the next linear layer keeps
    anyway) is enough; autograd through ``relu`` then ``square`` would keep ``relu(x)`` as a
    second activation-sized tensor. ``sqrt`` runs on ``max(y, 1e-30)``: vectorised ``sqrt`` of
    exact zeros (every dead unit) is several times slower on x86, and the floor changes a dead
    unit's gradient from 0 to ``2e-15 * grad``, far below float32 resolution of any live one.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        if inplace:
            y = x.relu_().square_()
            ctx.mark_dirty(y)
        else:
            y = F.relu(x).square_()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return y.clamp_min(1e-30).sqrt_().mul_(grad).mul_(2.0), None


def relu_square(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``relu(x) ** 2``.

    Args:
        x: input.
        inplace: overwrite ``x`` (pass ``True`` only for a tensor the caller just created and
            that nothing else keeps for backward, e.g. the output of a linear layer). Saves a
            new activation-sized allocation, in training too.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _ReluSquare.apply(x, inplace)
    return (x.relu_() if inplace else F.relu(x)).square_()


def star_relu(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, *, inplace: bool = False
) -> torch.Tensor:
    """``scale * relu(x) ** 2 + bias`` in three passes (the official order takes four).

    Args:
        x: input.
        scale: ``[1]``.
        bias: ``[1]``.
        inplace: overwrite ``x`` (a tensor the caller just created) when no gradient is needed;
            the result then keeps ``x``'s dtype (bf16 under autocast), otherwise it is float32
            like the official layer's.
    """
    r = relu_square(x, inplace=inplace)
    if inplace and not records_grad(r, scale, bias):
        return r.mul_(scale).add_(bias)
    return torch.mul(r, scale).add_(bias)  # add_ on mul's own output: autograd keeps r only


def linear_star_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    act: StarReLU,
    kernels: dict[str, str],
) -> torch.Tensor:
    """``act(F.linear(x, weight, bias))`` for 2-D ``x``: the expansion of ConvFormer's SepConv.

    ``kernels``: the layer's ``linear``/``linear_relu`` choices. Without autograd the ReLU goes
    with the product (``linear_relu``, fused where the kernel allows) and the square
    and the affine part run in place, keeping the product's dtype: one pass each over the
    output. With autograd: the product, then :func:`star_relu` (float32, like the official
    layer's).
    """
    if records_grad(x, weight, bias, act.scale, act.bias):
        return star_relu(
            linear(x, weight, bias, kernels["linear"]), act.scale, act.bias, inplace=True
        )
    r = linear_relu(x, weight, bias, kernels["linear_relu"], kernels["linear"]).square_()
    return r.mul_(act.scale).add_(act.bias)


class StarReLU(DualPath):
    """``scale * relu(x) ** 2 + bias`` with a learnable scalar scale and bias.

    The scalars keep the official shape ``[1]`` so that checkpoints load strictly.
    """

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(scale_value)))
        self.bias = nn.Parameter(torch.full((1,), float(bias_value)))

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        return star_relu(x, self.scale, self.bias)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        return official_star_relu(x, self.scale, self.bias)


class SquaredReLU(nn.Module):
    """``relu(x) ** 2``, the activation of the MLP classifier head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(F.relu(x))
