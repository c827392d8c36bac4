"""Dense prediction: the DFFormer paper's backbones, a small Semantic FPN, mm registration.

Tatsunami & Taki (AAAI 2024) evaluate DFFormer / CDFFormer on ADE20K with Semantic FPN
(Kirillov et al., 2019) and on COCO with RetinaNet and Mask R-CNN, through mmsegmentation /
mmdetection (okojoalg/dfformer@11f8c7b ``segmentation/``, ``detection/``). Their backbone is the
classification network with ``fork_feat=True``: no final norm or head, a LayerNorm (eps 1e-6) on
each of the four stage outputs, filters resized to the dense input size (512x512 for ADE20K,
800x800 for COCO) and ImageNet weights loaded without the classifier. Here that is::

    tokenmix.create_model("dfformer_s18", pretrained=True, features_only=True,
                          feature_norms=True, img_size=(512, 512))

(:func:`create_backbone` sets ``feature_norms`` for the MetaFormer family). Three ways to use it:

- :class:`SemanticFPN` / :func:`create_segmentation_model`: a self-contained Semantic FPN
  (mmseg's ``FPN`` neck and ``FPNHead`` decoder, BatchNorm instead of SyncBN: convert with
  ``nn.SyncBatchNorm.convert_sync_batchnorm`` for multi-GPU runs) returning per-pixel logits at
  the input size. Checked by ``tests/test_segmentation.py`` (shapes, and a few training steps on
  synthetic masks lowering the loss); not trained on ADE20K here.
- :func:`register_mm`: registers :class:`TokenMixBackbone` with mmsegmentation's and/or
  mmdetection's model registry (whichever is installed: ``pip install 'tokenmix[mm]'``), for
  configs like ``docs/examples/mmseg_dfformer_s18_fpn.py``. Importing this module registers it
  already when mmseg or mmdet is imported, so ``custom_imports`` in an mm config is enough.
- any other framework: ``model(x)`` is a list of NCHW maps, ``model.feature_info`` their
  channels and strides.
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .builder import create_model
from .registry import get_entrypoint

__all__ = [
    "FPN",
    "FPNHead",
    "SemanticFPN",
    "TokenMixBackbone",
    "create_backbone",
    "create_segmentation_model",
    "register_mm",
]

log = logging.getLogger("tokenmix")

MM_NAME = "TokenMixBackbone"  # the ``type`` in mm configs (a dotted name would mean a scope)


def create_backbone(
    name: str,
    pretrained: bool | str | Path | None = None,
    *,
    img_size: int | Sequence[int] = 512,
    out_indices: Sequence[int] | None = None,
    feature_norms: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A ``features_only`` backbone at the dense input size, the official way.

    Args:
        name: a registered model (``dfformer_s18``, ``cdfformer_m36``, ``lvvit_s``).
        pretrained: as :func:`~tokenmix.models.create_model`; classification weights load with
            their final norm and head dropped and their filters / position embeddings resized.
        img_size: the dense input size the resolution-dependent weights are stored for (512 for
            ADE20K crops, 800 for COCO, as the official backbones); other sizes run too.
        out_indices: the stages to return (default: all four, or every LV-ViT block).
        feature_norms: per-output LayerNorms (``norm{i}``); default: on for the MetaFormer
            family (the official dense backbones have them), off otherwise.
        **kwargs: architecture overrides for the model.
    """
    if feature_norms is None:
        feature_norms = get_entrypoint(name).__module__.endswith(".metaformer")
    if feature_norms:
        kwargs["feature_norms"] = True
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    size = img_size if isinstance(img_size, int) else tuple(img_size)
    return create_model(name, pretrained, features_only=True, img_size=size, **kwargs)


# --- Semantic FPN ---------------------------------------------------------------------------
class ConvBNReLU(nn.Sequential):
    """3x3 conv (no bias) -> BatchNorm -> ReLU, mmcv's ``ConvModule`` with a BN norm_cfg."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__(
            nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU(inplace=True),
        )


class FPN(nn.Module):
    """Feature pyramid (Lin et al., 2017), mm's ``FPN`` with ``num_outs == len(in_channels)``.

    1x1 lateral convs, a top-down pass adding each coarser level (nearest upsampling) to the
    next finer one, then a 3x3 conv per level; all levels get ``out_channels``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            coarse = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + coarse
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]


class FPNHead(nn.Module):
    """Semantic FPN decoder (Kirillov et al., 2019), mmseg's ``FPNHead``.

    Each level goes through ``log2(stride / finest stride)`` blocks of 3x3 conv-BN-ReLU and 2x
    bilinear upsampling (one conv block for the finest), the levels are summed at the finest
    stride, and a dropout + 1x1 conv gives the class logits there.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        channels: int = 128,
        dropout_rate: float = 0.1,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(strides):
            raise ValueError(f"{len(in_channels)} input levels but {len(strides)} strides")
        self.scale_heads = nn.ModuleList()
        for chs, stride in zip(in_channels, strides, strict=True):
            steps = max(1, int(math.log2(stride) - math.log2(strides[0])))
            layers: list[nn.Module] = []
            for k in range(steps):
                layers.append(ConvBNReLU(chs if k == 0 else channels, channels))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout_rate) if dropout_rate > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](feats[0])
        for head, f in zip(self.scale_heads[1:], feats[1:], strict=True):
            out = out + F.interpolate(
                head(f), size=out.shape[-2:], mode="bilinear", align_corners=False
            )
        return self.conv_seg(self.dropout(out))


class SemanticFPN(nn.Module):
    """Backbone -> :class:`FPN` -> :class:`FPNHead`, logits upsampled to the input size.

    Args:
        backbone: a ``features_only`` model (``forward`` returns a list of NCHW maps,
            ``feature_info`` their channels and strides), e.g. from :func:`create_backbone`.
        num_classes: segmentation classes (150 for ADE20K).
        fpn_channels, head_channels, dropout_rate: the official config's 256, 128 and 0.1.

    ``forward(x)`` returns ``[B, num_classes, H, W]``; train it with
    ``F.cross_entropy(logits, masks, ignore_index=255)`` (255: mmseg's ignored label).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        fpn_channels: int = 256,
        head_channels: int = 128,
        dropout_rate: float = 0.1,
    ) -> None:
        super().__init__()
        info = backbone.feature_info
        self.backbone = backbone
        self.neck = FPN(info.channels(), fpn_channels)
        self.decode_head = FPNHead(
            [fpn_channels] * len(info),
            info.reduction(),
            num_classes,
            channels=head_channels,
            dropout_rate=dropout_rate,
        )
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.neck(self.backbone(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def create_segmentation_model(
    name: str,
    num_classes: int,
    pretrained: bool | str | Path | None = None,
    *,
    img_size: int | Sequence[int] = 512,
    fpn_channels: int = 256,
    head_channels: int = 128,
    dropout_rate: float = 0.1,
    **kwargs: Any,
) -> SemanticFPN:
    """Semantic FPN on :func:`create_backbone` ``(name, pretrained, img_size=...)``.

    ``create_segmentation_model("dfformer_s18", 150, pretrained=True)`` is the paper's ADE20K
    model (backbone from ImageNet weights, neck and head freshly initialised).
    """
    backbone = create_backbone(name, pretrained, img_size=img_size, **kwargs)
    return SemanticFPN(
        backbone,
        num_classes,
        fpn_channels=fpn_channels,
        head_channels=head_channels,
        dropout_rate=dropout_rate,
    )


# --- mmsegmentation / mmdetection -----------------------------------------------------------
class TokenMixBackbone(nn.Module):
    """A tokenmix backbone as an mm model: ``backbone=dict(type="TokenMixBackbone", ...)``.

    The arguments are :func:`create_backbone`'s (``model_name``, ``pretrained``, ``img_size``,
    ``out_indices``, ``feature_norms``, architecture overrides). Weights load at construction,
    so ``init_weights`` (called by mm runners) leaves them alone. ``forward`` returns a tuple
    of NCHW maps, as mm necks expect. The parameters live under ``model.`` (``backbone.model.
    stages.0...`` in an mm checkpoint).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool | str | None = None,
        img_size: int | Sequence[int] = 512,
        out_indices: Sequence[int] | None = None,
        feature_norms: bool | None = None,
        init_cfg: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if init_cfg is not None:
            raise ValueError("TokenMixBackbone loads its weights itself: use pretrained=")
        self.model = create_backbone(
            model_name,
            pretrained,
            img_size=img_size,
            out_indices=out_indices,
            feature_norms=feature_norms,
            **kwargs,
        )
        self.feature_info = self.model.feature_info

    def init_weights(self) -> None:
        """Nothing to do: the weights were initialised or loaded at construction."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x))


def _mm_registries(package: str) -> Any:
    """``package``'s model registry: ``<pkg>.registry.MODELS`` (1.x / 3.x), else the 0.x / 2.x
    ``<pkg>.models.builder.BACKBONES``. ``ImportError`` if the package is not installed."""
    try:
        return importlib.import_module(f"{package}.registry").MODELS
    except (ImportError, AttributeError):
        return importlib.import_module(f"{package}.models.builder").BACKBONES


def register_mm(packages: Sequence[str] = ("mmseg", "mmdet")) -> list[str]:
    """Register :class:`TokenMixBackbone` with the mm registries that are installed.

    Returns the packages it is now registered with (registering twice is harmless).

    Raises:
        ImportError: none of ``packages`` is installed (``pip install 'tokenmix[mm]'``).
    """
    done = []
    for package in packages:
        try:
            registry = _mm_registries(package)
        except ImportError:
            continue
        if registry.get(MM_NAME) is not TokenMixBackbone:
            registry.register_module(name=MM_NAME, module=TokenMixBackbone)
        done.append(package)
    if not done:
        raise ImportError(
            f"register_mm needs one of {', '.join(packages)} (mmsegmentation / mmdetection): "
            "pip install 'tokenmix[mm]'"
        )
    return done


def _register_if_mm_loaded() -> None:
    """mm's ``custom_imports`` imports this module after mmseg / mmdet: register then."""
    loaded = [p for p in ("mmseg", "mmdet") if sys.modules.get(p) is not None]
    if loaded:
        try:
            register_mm(loaded)
        except ImportError as e:  # an mm install without a model registry: say so, go on
            log.warning("tokenmix: could not register %s with %s: %s", MM_NAME, loaded, e)


_register_if_mm_loaded()
