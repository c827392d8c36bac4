"""Convolution followed by BatchNorm, with the norm folded into the convolution in eval mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    weight = conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    return F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)
