"""Reusable building blocks: activations, norms, MLPs, stochastic depth and token mixers."""

from .activations import SquaredReLU, StarReLU
from .drop import DropPath
from .mlp import Mlp, MlpHead, Scale
from .norm import LayerNormNoBias
from .token_mixers import (
    TOKEN_MIXERS,
    Attention,
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
    "resize_complex_weight",
]
