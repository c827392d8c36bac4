"""Registered model families and the functions to build and load them."""

from . import (
    lvvit,  # noqa: F401  (registers LV-ViT)
    metaformer,  # noqa: F401  (registers the MetaFormer family)
)
from .builder import create_model
from .checkpoint import CheckpointError, load_weights, read_state_dict
from .pretrained import PretrainedCfg
from .registry import get_pretrained_cfg, list_models, list_pretrained_cfgs

__all__ = [
    "CheckpointError",
    "PretrainedCfg",
    "create_model",
    "get_pretrained_cfg",
    "list_models",
    "list_pretrained_cfgs",
    "load_weights",
    "read_state_dict",
]
