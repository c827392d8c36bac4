"""Datasets, decoding, batched augmentation, token-label maps and loaders.

:func:`create_transform` is the one-line eval transform of a model (PIL image -> normalised
tensor); :data:`IMAGENET_1K_CLASSES` names the outputs of the published ImageNet-1k weights.
"""

from .imagenet_classes import IMAGENET_1K_CLASSES
from .transforms import EvalTransform, create_transform, eval_transforms

__all__ = ["IMAGENET_1K_CLASSES", "EvalTransform", "create_transform", "eval_transforms"]
