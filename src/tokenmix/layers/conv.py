"""Convolution followed by BatchNorm (and ReLU), with the norm folded into the convolution in
eval mode and, in CPU inference, the ReLU fused into oneDNN's convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import records_grad

_CONV_POINTWISE = (
    getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
    if torch.backends.mkldnn.is_available()
    else None
)


def conv_bn_relu(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(bn(conv(x)))``.

    In CPU inference with running statistics the folded convolution and the ReLU are one
    oneDNN op, which applies the ReLU to each output tile while it is in cache: one pass over
    the (large, full-resolution) stem activation fewer; measured on 2 cores for LV-ViT's stem:
    ~10 % faster for the 3x3 convolutions, ~30 % for the 7x7/2 one on 3 channels.
    """
    fusable = (
        _CONV_POINTWISE is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not bn.training
        and bn.running_mean is not None
        and bn.running_var is not None
        and isinstance(conv.padding, tuple)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not records_grad(x, conv.weight, conv.bias, bn.weight, bn.bias)
    )
    if not fusable:
        return F.relu(conv_bn(conv, bn, x), inplace=True)
    weight, bias = _folded(conv, bn)
    return _CONV_POINTWISE(
        x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups, "relu", [], ""
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
