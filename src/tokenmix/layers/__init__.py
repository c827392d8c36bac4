"""Reusable building blocks: activations, norms, MLPs, stochastic depth and token mixers.

Every layer with a faster implementation also keeps the official operation order as a
reference path; :func:`set_reference_mode` switches a whole model between the two.
Which kernel each layer runs is resolved at construction by :mod:`tokenmix.kernels` (shown in
the layer's ``repr``); :func:`dft_as_matmul` computes the spectral filters as DFT-matrix
products (for ONNX export).
"""

from .activations import SquaredReLU, StarReLU, relu_square
from .attention import Attention
from .drop import DropPath
from .mlp import Mlp, MlpHead, Scale, fold_star_relu
from .norm import LayerNormNoBias
from .reference import DualPath, reference_mode, set_reference_mode, uses_reference_path
from .spectral import dft_as_matmul
from .token_mixers import (
    TOKEN_MIXERS,
    DynamicFilter,
    GlobalFilter,
    SepConv,
    create_token_mixer,
    resize_complex_weight,
)

__all__ = [
    "TOKEN_MIXERS",
    "Attention",
    "DropPath",
    "DualPath",
    "DynamicFilter",
    "GlobalFilter",
    "LayerNormNoBias",
    "Mlp",
    "MlpHead",
    "Scale",
    "SepConv",
    "SquaredReLU",
    "StarReLU",
    "create_token_mixer",
    "dft_as_matmul",
    "fold_star_relu",
    "reference_mode",
    "relu_square",
    "resize_complex_weight",
    "set_reference_mode",
    "uses_reference_path",
]
