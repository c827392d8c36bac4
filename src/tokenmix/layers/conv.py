"""Convolution followed by BatchNorm (and ReLU), with the norm folded into the convolution in
eval mode and, where the ``conv_relu`` kernel allows, the ReLU fused into the convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.ops import conv2d_relu, records_grad


def conv_bn_relu(
    conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor, kernel: str = "unfused"
) -> torch.Tensor:
    """``relu(bn(conv(x)))``.

    In inference with running statistics BatchNorm is folded into the convolution, and with
    ``kernel="onednn"`` (the ``conv_relu`` choice) the ReLU is applied to each output tile by
    oneDNN while it is in cache: one pass over the (large, full-resolution) stem activation
    fewer.
    """
    foldable = (
        not bn.training
        and bn.running_mean is not None
        and bn.running_var is not None
        and isinstance(conv.padding, tuple)
        and not records_grad(x, conv.weight, conv.bias, bn.weight, bn.bias)
    )
    if not foldable:
        return F.relu(conv_bn(conv, bn, x), inplace=True)
    weight, bias = _folded(conv, bn)
    return conv2d_relu(
        x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, kernel
    )


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(.))`` as one convolution (running statistics)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1))), shift


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``.

    With running statistics (eval mode), BatchNorm is a per-channel affine map, so it is
    folded into the convolution's weight and bias (``w * g / sqrt(v + eps)``,
    ``b' = beta + (b - mean) * g / sqrt(v + eps)``): one convolution, no normalisation pass and
    no second activation-sized tensor. In training (batch statistics) both layers run as
    written.
    """
    if bn.training or bn.running_mean is None or bn.running_var is None:
        return bn(conv(x))
    weight, shift = _folded(conv, bn)
    return F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)
