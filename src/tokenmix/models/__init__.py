"""Registered model families and the functions to build and load them.

Dense prediction (backbones at the detection / segmentation size, a Semantic FPN, mmseg / mmdet
registration) is in :mod:`tokenmix.models.segmentation`, imported on demand.
"""

from . import (
    lvvit,  # noqa: F401  (registers LV-ViT)
    metaformer,  # noqa: F401  (registers the MetaFormer family)
)
from .builder import create_model
from .checkpoint import CheckpointError, load_weights, read_state_dict
from .features import FeatureInfo
from .hub import WeightsError, download_weights
from .pretrained import PretrainedCfg
from .registry import get_pretrained_cfg, list_models, list_pretrained_cfgs

__all__ = [
    "CheckpointError",
    "FeatureInfo",
    "PretrainedCfg",
    "WeightsError",
    "create_model",
    "download_weights",
    "get_pretrained_cfg",
    "list_models",
    "list_pretrained_cfgs",
    "load_weights",
    "read_state_dict",
]
