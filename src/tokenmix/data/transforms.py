"""Worker-side load transforms (PIL -> fixed-size uint8 tensor) and on-device normalisation.

The split of work follows where each step is cheapest: DataLoader workers decode and resize
(Pillow, one image at a time, CPU), the batch travels to the device as uint8 (4x less to copy
than float), and everything per-pixel after that (augmentation, normalisation) runs batched on
the training device (:mod:`tokenmix.data.augment`, :class:`Normalize`).

- :class:`SquashResize` (training): the *whole* image resized to a fixed square ``load_size``,
  aspect ratio not kept. Random-resized-crop boxes are drawn later on the device in coordinates
  normalised to the full image, so they are the same boxes a token-label map of the full image
  needs (:mod:`tokenmix.data.crops`).
- :class:`ResizeCenterCrop` (evaluation): timm's / torchvision's eval transform, to the pixel:
  shorter side resized to ``floor(size / crop_pct)`` (a non-square target resizes both sides to
  ``floor(side / crop_pct)``), Pillow resampling with antialiasing, then a centre crop with
  torchvision's rounding. :func:`eval_transforms` builds it and :class:`Normalize` from a model's
  :class:`~tokenmix.models.pretrained.PretrainedCfg` (``input_size``, ``crop_pct``,
  ``interpolation``, ``mean``, ``std``), each overridable.
- :func:`create_transform` (inference in one line): both steps as one callable, PIL image ->
  normalised ``[3, H, W]`` float32, from a model, its cfg or a timm data config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..models.pretrained import PretrainedCfg
from ..utils import to_2tuple

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def _resample(name: str) -> Image.Resampling:
    if name not in _RESAMPLE:
        raise ValueError(f"unknown interpolation {name!r}; choose from {sorted(_RESAMPLE)}")
    return _RESAMPLE[name]


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """An RGB ``PIL.Image`` as a ``[3, H, W]`` uint8 tensor (a copy the tensor owns)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class SquashResize:
    """Training load: the whole image resized to ``size`` (``(h, w)`` or an int) as uint8.

    Attributes:
        size: output ``(height, width)``; pick it above the training crop (e.g. 256 for 224
            crops) so small random crops keep their detail.
        interpolation: Pillow resampling filter name.
        draft: let the JPEG decoder pre-shrink large photos (see ``decode_image(draft_size=)``);
            a large speed-up for ImageNet-sized files at a small, random-crop-sized cost in
            fidelity, so on by default for training only.
    """

    size: tuple[int, int] | int
    interpolation: str = "bicubic"
    draft: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", to_2tuple(self.size))
        _resample(self.interpolation)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.size  # type: ignore[return-value]

    @property
    def draft_size(self) -> tuple[int, int] | None:
        h, w = self.output_size
        return (w, h) if self.draft else None

    def __call__(self, img: Image.Image) -> torch.Tensor:
        h, w = self.output_size
        if img.size != (w, h):
            img = img.resize((w, h), _resample(self.interpolation))
        return pil_to_uint8(img)


@dataclass(frozen=True)
class ResizeCenterCrop:
    """Evaluation load: resize by ``1 / crop_pct``, centre crop to ``size``, as uint8.

    Attributes:
        size: crop ``(height, width)`` or an int.
        crop_pct: fraction of the resized image the crop keeps (0.875 -> 256 then 224).
        interpolation: Pillow resampling filter name (pretrained cfgs say ``bicubic``).
    """

    size: tuple[int, int] | int
    crop_pct: float = 1.0
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", to_2tuple(self.size))
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        _resample(self.interpolation)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.size  # type: ignore[return-value]

    @property
    def draft_size(self) -> None:
        return None

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the resize step, with timm's and torchvision's rounding."""
        ch, cw = self.output_size
        sh, sw = math.floor(ch / self.crop_pct), math.floor(cw / self.crop_pct)
        if sh != sw:  # non-square target: both sides set explicitly
            return sw, sh
        short, long_ = (width, height) if width <= height else (height, width)
        new_long = int(sh * long_ / short)
        return (sh, new_long) if width <= height else (new_long, sh)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        new_w, new_h = self.resized_size(*img.size)
        if (new_w, new_h) != img.size:
            img = img.resize((new_w, new_h), _resample(self.interpolation))
        ch, cw = self.output_size
        if new_w < cw or new_h < ch:
            raise ValueError(f"resized image {new_w}x{new_h} is smaller than the crop {cw}x{ch}")
        top = round((new_h - ch) / 2.0)
        left = round((new_w - cw) / 2.0)
        return pil_to_uint8(img.crop((left, top, left + cw, top + ch)))


class Normalize(nn.Module):
    """On-device ``(x / 255 - mean) / std`` for uint8 batches, ``(x - mean) / std`` for float.

    Float32 output whatever the input; autocast decides later precision. Works for ``[B, 3, H, W]``
    in any memory format.
    """

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.device)
        std = self.std.to(x.device)
        if x.dtype == torch.uint8:
            return (x.float() / 255.0 - mean) / std
        return (x.float() - mean) / std


def eval_transforms(
    cfg: PretrainedCfg,
    *,
    img_size: int | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> tuple[ResizeCenterCrop, Normalize]:
    """The eval transform a pretrained cfg prescribes: ``(worker_transform, device_normalize)``.

    Each keyword overrides the cfg's value (``img_size`` replaces ``input_size[1:]``).
    """
    size = to_2tuple(img_size) if img_size is not None else (cfg.input_size[1], cfg.input_size[2])
    load = ResizeCenterCrop(
        size,
        crop_pct=cfg.crop_pct if crop_pct is None else crop_pct,
        interpolation=cfg.interpolation if interpolation is None else interpolation,
    )
    norm = Normalize(cfg.mean if mean is None else mean, cfg.std if std is None else std)
    return load, norm


class EvalTransform:
    """One image for inference: ``normalize(load(img))``, PIL image -> ``[3, H, W]`` float32.

    The same two steps :func:`eval_transforms` returns (``load`` runs in data-loader workers,
    ``normalize`` batched on the device), joined for code that prepares one image at a time.
    Images in another mode (greyscale, RGBA, palette) are converted to RGB first.
    """

    def __init__(self, load: ResizeCenterCrop, normalize: Normalize) -> None:
        self.load = load
        self.normalize = normalize

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self.normalize(self.load(img)[None])[0]

    def __repr__(self) -> str:
        mean = tuple(round(v, 4) for v in self.normalize.mean.flatten().tolist())
        std = tuple(round(v, 4) for v in self.normalize.std.flatten().tolist())
        return f"EvalTransform({self.load!r}, mean={mean}, std={std})"


def create_transform(
    source: nn.Module | PretrainedCfg | Mapping[str, Any],
    *,
    img_size: int | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> EvalTransform:
    """The eval transform of a model, as one callable: ``create_transform(model)(img)``.

    Example::

        model = tokenmix.create_model("caformer_s18", pretrained=True).eval()
        x = tokenmix.data.create_transform(model)(Image.open("cat.jpg"))
        top5 = model(x[None]).softmax(-1).topk(5)

    Args:
        source: a model (its ``pretrained_cfg``), a :class:`PretrainedCfg`, or a timm data
            config (``timm.data.resolve_data_config(model=model)``: ``input_size``,
            ``interpolation``, ``mean``, ``std``, ``crop_pct``; ``crop_mode`` must be
            ``"center"``, the only one implemented).
        img_size, crop_pct, interpolation, mean, std: override the source's values.
    """
    cfg: Any = source.pretrained_cfg if isinstance(source, nn.Module) else source
    if not isinstance(cfg, PretrainedCfg):
        if not isinstance(cfg, Mapping):
            raise TypeError(
                f"create_transform needs a model, a PretrainedCfg or a data config, "
                f"got {type(source).__name__}"
            )
        if cfg.get("crop_mode", "center") != "center":
            raise ValueError(f"crop_mode {cfg['crop_mode']!r}: only 'center' is implemented")
        known = ("input_size", "interpolation", "mean", "std", "crop_pct")
        cfg = PretrainedCfg(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in cfg.items()
                if k in known and v is not None
            }
        )
    load, norm = eval_transforms(
        cfg, img_size=img_size, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std
    )
    return EvalTransform(load, norm)
