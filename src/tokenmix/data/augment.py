"""Batched training augmentation on the training device (kornia), with timm's recipe semantics.

One call turns a uint8 batch from the loader into what the loss needs, in the order of timm's
``transforms_imagenet_train`` + ``Mixup`` (huggingface/pytorch-image-models, the pipeline the
official DFFormer, MetaFormer and LV-ViT training scripts call):

1. RandomResizedCrop, an optional random translation by whole pixels (``translate``), and
   horizontal flip, as boxes (:mod:`tokenmix.data.crops`). The boxes and flips are returned,
   so token-label maps can be cropped with exactly the same ones. Flips are random per sample,
   or alternate by epoch (``hflip="alternate"``: :func:`alternate_flips`). With a
   ``size_schedule`` (progressive resizing), the crops are then resized to the epoch's size.
2. Rotation (kornia ``RandomRotation``, off by default; not part of the official recipes).
3. RandAugment (timm spec string, below), then colour jitter if set (kornia ``ColorJitter``,
   timm's ``color_jitter`` meaning: one strength for brightness, contrast and saturation; timm
   skips jitter when RandAugment is on, so recipes set one of the two).
4. Normalisation with the model's mean/std.
5. Random erasing after normalisation (timm ``RandomErasing``: area 2-33 %, aspect 0.3-3.3,
   ``pixel`` mode fills with per-pixel N(0, 1) noise, ``const`` with 0). The region comes from
   kornia ``RandomErasing``.
6. Mixup / CutMix on the batch paired with its reverse (timm ``Mixup``, ``mode="batch"``):
   one ``lam`` per batch from Beta(alpha, alpha), CutMix box with ``lam`` corrected to the
   clipped area, targets ``lam * smooth(y) + (1 - lam) * smooth(y.flip(0))`` where ``smooth``
   is label smoothing. ``lam`` and the box are returned (:class:`MixParams`) to mix dense
   token-label targets the same way.

Randomness: all of it flows from :class:`TrainAugment`'s ``torch.Generator`` (seed it per rank,
or per step as the engine does). Each call
draws one seed from it and runs with the global CPU and CUDA RNGs forked and seeded from that
seed, so kornia's internal sampling is reproducible too, the caller's RNG state is untouched,
and saving ``state_dict()`` (which holds the generator state) makes a resumed run augment the
same way.

**RandAugment mapping** (timm ``rand-m9-mstd0.5-inc1`` -> kornia
``kornia.augmentation.auto.RandAugment``). kornia's magnitude ``m`` runs over (0, 30) where
timm's level runs over (0, 10), so ``m = 3 * level``; every operation's range is set so that
kornia's ``low + (high - low) * m / 30`` is timm's argument at that level:

=====================  =============================  ============================================
operation              timm argument at level L       here
=====================  =============================  ============================================
Rotate                 +-30 L/10 degrees              kornia Rotate, same (fill black, timm grey)
ShearX / ShearY        +-0.3 L/10 shear coefficient   kornia shear by atan(coefficient) degrees,
                                                      about the centre (timm: about the corner)
TranslateX/YRel        +-0.45 L/10 of the size        kornia Translate, same
Posterize(Increasing)  inc: 4 - int(0.4 L) bits,      kornia Posterize with exactly these bits
                       else int(0.4 L)
Solarize(Increasing)   inc: threshold 256-int(25.6L)  kornia solarize at threshold / 255
                       else int(25.6 L)
SolarizeAdd            +int(11 L) below 128           PIL semantics (kornia's version also inverts)
Color/Contrast/        inc: 1 +- 0.9 L/10 (>= 0.1),   PIL ImageEnhance semantics (blend with
Brightness/Sharpness   else 0.1 + 1.8 L/10            grey / grey mean / black / 3x3 smooth)
AutoContrast, Equalize, Invert                        kornia
=====================  =============================  ============================================

Each chosen operation is applied to a sample with probability ``p`` (timm 0.5), magnitude noise
``mstd`` is N(level, mstd) clipped to ``[0, mmax]`` (``mstd > 100``: uniform in ``[0, level]``),
both as in timm. Deviations that remain: kornia picks the ``n`` operations once per call and
without replacement, where timm picks per image with replacement, so the batch is processed in
groups of ``randaugment_group`` samples, each with its own operations and magnitude noise;
geometric operations fill with black instead of timm's ImageNet-mean grey.

Non-square source images: the loader squashes the whole image to a square
(:class:`~tokenmix.data.transforms.SquashResize`) and the crop aspect ratios are drawn in that
square, so a crop's aspect is relative to the squashed image rather than to the original pixels.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from kornia.augmentation import random_generator as rg
from kornia.augmentation.auto import RandAugment
from kornia.augmentation.auto.operations import (
    AutoContrast,
    Equalize,
    Invert,
    OperationBase,
    PolicySequential,
    Rotate,
    TranslateX,
    TranslateY,
)
from kornia.color import rgb_to_grayscale
from kornia.enhance import sharpness

from ..config.schema import AugmentConfig
from ..utils import cut_box
from .crops import crop_resize, full_boxes, sample_rrc_boxes, shift_boxes

_LEVEL_DENOM = 10.0  # timm's level scale
_KORNIA_SCALE = 30.0  # kornia's magnitude scale


# --------------------------------------------------------------------------- targets and config


def one_hot_smooth(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Integer labels -> probability rows with ``smoothing`` spread uniformly over all classes."""
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, device=target.device)
    return out.scatter_(1, target.long().unsqueeze(1), 1.0 - smoothing + off)


# The DeiT/MetaFormer/DFFormer ImageNet recipe on top of AugmentConfig's defaults (the ``aug``
# section of configs/dfformer_s18_in1k.yaml); its label smoothing, 0.1, is ``loss.label_smoothing``.
_IMAGENET_RECIPE: dict[str, Any] = {
    "randaugment": "rand-m9-mstd0.5-inc1",
    "erase_rate": 0.25,
    "mixup_alpha": 0.8,
    "cutmix_alpha": 1.0,
}


def imagenet_recipe(**overrides: Any) -> AugmentConfig:
    """The ImageNet training recipe (RandAugment m9, erasing 0.25, Mixup 0.8, CutMix 1.0),
    with ``overrides`` (any :class:`~tokenmix.config.schema.AugmentConfig` field) applied."""
    return AugmentConfig(**{**_IMAGENET_RECIPE, **overrides})


def check_config(cfg: AugmentConfig) -> None:
    """Raise ``ValueError`` for an augmentation :class:`AugmentConfig` cannot run.

    The config loader checks each field's type and range already; this also covers configs
    built in code, the crop ``scale`` order and the RandAugment spec string.
    """
    for name in ("hflip_rate", "erase_rate", "mix_rate", "switch_rate"):
        value = getattr(cfg, name)
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if cfg.interpolation not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(
            f"interpolation must be bilinear, bicubic or nearest, got {cfg.interpolation!r}"
        )
    if cfg.erase_mode not in ("pixel", "const"):
        raise ValueError(f"erase_mode must be 'pixel' or 'const', got {cfg.erase_mode!r}")
    if cfg.scale is not None and not 0 < cfg.scale[0] <= cfg.scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {cfg.scale}")
    if cfg.mixup_alpha < 0 or cfg.cutmix_alpha < 0 or cfg.color_jitter < 0 or cfg.rotation < 0:
        raise ValueError("mixup_alpha, cutmix_alpha, color_jitter and rotation must be >= 0")
    if cfg.translate < 0:
        raise ValueError(f"translate must be >= 0 pixels, got {cfg.translate}")
    if cfg.hflip not in ("random", "alternate"):
        raise ValueError(f"hflip must be 'random' or 'alternate', got {cfg.hflip!r}")
    if cfg.hflip == "alternate" and cfg.hflip_rate != 0.5:
        raise ValueError(
            f"hflip='alternate' flips every image in every other epoch (rate 0.5); "
            f"got hflip_rate={cfg.hflip_rate}"
        )
    if cfg.size_schedule is not None:
        steps = [tuple(step) for step in cfg.size_schedule]
        if any(len(step) != 2 or step[1] < 1 for step in steps):
            raise ValueError(
                f"size_schedule steps are [from_epoch, size >= 1], got {cfg.size_schedule}"
            )
        if not steps or steps[0][0] != 0:
            raise ValueError(f"size_schedule must start at epoch 0, got {cfg.size_schedule}")
        if any(b[0] <= a[0] for a, b in itertools.pairwise(steps)):
            raise ValueError(
                f"size_schedule epochs must increase strictly, got {cfg.size_schedule}"
            )
    if cfg.randaugment_group < 1:
        raise ValueError(f"randaugment_group must be >= 1, got {cfg.randaugment_group}")
    if cfg.randaugment is not None:
        parse_randaugment(cfg.randaugment)


# --------------------------------------------------------------------------- RandAugment


@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed timm RandAugment string ``rand-m9-n2-mstd0.5-mmax10-inc1-p0.5``.

    Unspecified fields take timm's defaults: level 10, 2 operations, no noise, max 10, the
    non-increasing operation set, probability 0.5.
    """

    magnitude: float = 10.0
    num_ops: int = 2
    magnitude_std: float = 0.0
    magnitude_max: float = 10.0
    increasing: bool = False
    prob: float = 0.5


def parse_randaugment(spec: str) -> RandAugmentSpec:
    """Parse timm's RandAugment string; unknown or unsupported keys are errors."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment spec must start with 'rand', got {spec!r}")
    values: dict[str, Any] = {}
    keys = {
        "m": "magnitude",
        "n": "num_ops",
        "mstd": "magnitude_std",
        "mmax": "magnitude_max",
        "inc": "increasing",
        "p": "prob",
    }
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?)", part)
        if match is None or match.group(1) not in keys:
            raise ValueError(
                f"unsupported RandAugment option {part!r} in {spec!r} (known: {sorted(keys)})"
            )
        key, raw = keys[match.group(1)], match.group(2)
        if key == "num_ops":
            values[key] = int(raw)
        elif key == "increasing":
            values[key] = bool(int(raw))
        else:
            values[key] = float(raw)
    if values.get("magnitude_std", 0.0) > 100:
        values["magnitude_std"] = math.inf  # timm: mstd > 100 means uniform in [0, level]
    return RandAugmentSpec(**values)


class _Enhance(K.IntensityAugmentationBase2D):
    """PIL ``ImageEnhance`` semantics: ``degenerate + factor * (image - degenerate)``, clamped.

    ``kind`` picks the degenerate image as PIL does: ``color`` the greyscale image, ``contrast``
    the mean of the greyscale image, ``brightness`` black, ``sharpness`` the 3x3 smoothed image
    (kornia's ``sharpness``, which implements PIL's kernel).
    """

    def __init__(self, kind: str, span: tuple[float, float], p: float) -> None:
        super().__init__(p=p)
        self.kind = kind
        self._param_generator = rg.PlainUniformGenerator((span, "factor", None, None))

    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        factor = params["factor"].to(input)
        if self.kind == "sharpness":
            return sharpness(input.clamp(0, 1), factor)
        f = factor.view(-1, 1, 1, 1)
        if self.kind == "brightness":
            return (input * f).clamp(0, 1)
        grey = rgb_to_grayscale(input)
        if self.kind == "contrast":
            grey = grey.mean(dim=(-3, -2, -1), keepdim=True)
        return (grey + f * (input - grey)).clamp(0, 1)


class _SolarizeAdd(K.IntensityAugmentationBase2D):
    """PIL/timm ``solarize_add``: add to pixels below 128/255, leave the others (no inversion).

    The sampled ``addition`` is in 0..255 units (timm's), mapped by the magnitude function.
    """

    def __init__(self, p: float) -> None:
        super().__init__(p=p)
        self._param_generator = rg.PlainUniformGenerator(((0.0, 110.0), "addition", None, None))

    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        add = params["addition"].to(input).view(-1, 1, 1, 1)
        # below 128 of 255; 127.5 keeps float noise on an exact 128 / 255 out
        return torch.where(input < 127.5 / 255, (input + add).clamp(max=1.0), input)


class _Signed:
    """Magnitude -> ``max(floor, 1 + sign * magnitude)`` with a random sign per sample (timm)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        sign = torch.where(torch.rand(x.shape, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)
        return (1.0 + sign * x).clamp(min=0.1)


class _ShearDegrees:
    """timm's shear coefficient -> the angle kornia's shear takes."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rad2deg(torch.atan(x))


class _Bits:
    """Posterize bits: ``int(0.4 L)`` (or ``4 - int(0.4 L)``) from kornia's ``4 - 0.4 L``."""

    def __init__(self, increasing: bool) -> None:
        self.increasing = increasing

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        level_bits = torch.floor(4.0 - x + 1e-6)  # int(0.4 L)
        return (4.0 - level_bits if self.increasing else level_bits).long()


class _Threshold:
    """Solarize threshold on [0, 1]: ``256 - int(256 L/10)`` (or ``int(256 L/10)``), over 255."""

    def __init__(self, increasing: bool) -> None:
        self.increasing = increasing

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.floor(256.0 * x + 1e-6)
        return ((256.0 - t if self.increasing else t) / 255.0).clamp(0.0, 1.0)


class _AddBelow:
    """SolarizeAdd amount: ``int(110 L/10) / 255``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x + 1e-6) / 255.0


def _operation(name: str, p: float, increasing: bool) -> OperationBase:
    """One timm RandAugment operation as a kornia operation; ranges are timm's level 0..10."""
    if name == "auto_contrast":
        return AutoContrast(p)
    if name == "equalize":
        return Equalize(p)
    if name == "invert":
        return Invert(p)
    if name == "rotate":
        return Rotate(None, p, magnitude_range=(0.0, 30.0), symmetric_megnitude=True)
    if name in ("translate_x", "translate_y"):
        cls = TranslateX if name == "translate_x" else TranslateY
        return cls(None, p, magnitude_range=(0.0, 0.45), symmetric_megnitude=True)
    if name in ("shear_x", "shear_y"):
        bounds = (0.0, 0.3) if name == "shear_x" else (0.0, 0.0, 0.0, 0.3)
        return OperationBase(
            K.RandomShear(bounds, p=p, align_corners=True),
            initial_magnitude=[(name, None)],
            magnitude_fn=_ShearDegrees(),
            symmetric_megnitude=True,
        )
    if name == "posterize":  # kornia runs bits_factor backwards: 4 - 0.4 L
        return OperationBase(
            K.RandomPosterize((0.0, 4.0), p=p),
            [("bits_factor", None)],
            magnitude_fn=_Bits(increasing),
        )
    if name == "solarize":
        return OperationBase(
            K.RandomSolarize(0.5, 0.0, p=p),
            [("thresholds", None)],
            magnitude_fn=_Threshold(increasing),
        )
    if name == "solarize_add":
        return OperationBase(_SolarizeAdd(p), [("addition", None)], magnitude_fn=_AddBelow())
    if name in ("color", "contrast", "brightness", "sharpness"):
        span = (0.0, 0.9) if increasing else (0.1, 1.9)
        return OperationBase(
            _Enhance(name, span, p),
            [("factor", None)],
            magnitude_fn=_Signed() if increasing else None,
        )
    raise KeyError(name)


TIMM_OPS = (
    "auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add",
    "color", "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y",
)  # fmt: skip


class TimmRandAugment(RandAugment):
    """kornia's RandAugment with timm's 15 operations, magnitudes and per-sample probability.

    Args:
        spec: the parsed timm string.
        ops: the candidate operations (names from :data:`TIMM_OPS`); all 15 by default.

    Call :meth:`sample_level` before each forward to apply timm's magnitude noise.
    """

    def __init__(self, spec: RandAugmentSpec, ops: Sequence[str] = TIMM_OPS) -> None:
        unknown = sorted(set(ops) - set(TIMM_OPS))
        if unknown:
            raise ValueError(f"unknown RandAugment operations {unknown}; known: {TIMM_OPS}")
        self.spec = spec
        super().__init__(n=spec.num_ops, m=15, policy=[[(name, 0.0, 1.0)] for name in ops])
        self.m = min(spec.magnitude, spec.magnitude_max) * _KORNIA_SCALE / _LEVEL_DENOM

    def compose_subpolicy_sequential(
        self, subpolicy: list[tuple[str, float, float]]
    ) -> PolicySequential:
        (name, _, _), *rest = subpolicy
        if rest:
            raise ValueError(f"one operation per RandAugment sub-policy, got {subpolicy}")
        return PolicySequential(_operation(name, self.spec.prob, self.spec.increasing))

    def sample_level(self) -> float:
        """Draw this call's level (timm's ``mstd`` noise, global RNG) and set kornia's ``m``."""
        level, std = self.spec.magnitude, self.spec.magnitude_std
        if std == math.inf:
            level = float(torch.rand(())) * level
        elif std > 0:
            level = level + std * float(torch.randn(()))
        level = min(max(level, 0.0), self.spec.magnitude_max)
        self.m = level * _KORNIA_SCALE / _LEVEL_DENOM
        return level


# --------------------------------------------------------------------------- Mixup / CutMix


@dataclass(frozen=True)
class MixParams:
    """How a batch was mixed with its reverse: ``mixed[i] = mix(x[i], x[B - 1 - i])``.

    Attributes:
        mode: ``None`` (not mixed), ``"mixup"`` or ``"cutmix"``.
        lam: weight of the sample itself (for CutMix: the fraction of its own pixels kept).
        box: CutMix region taken from the partner, ``(x0, y0, x1, y1)`` normalised to the image.
    """

    mode: str | None = None
    lam: float = 1.0
    box: tuple[float, float, float, float] | None = None

    def mix_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Mix per-sample targets ``[B, ...]`` with weight ``lam`` (class targets)."""
        if self.mode is None:
            return targets
        return targets * self.lam + targets.flip(0) * (1.0 - self.lam)

    def mix_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Mix dense maps ``[B, C, h, w]`` (token-label targets) as the images were mixed.

        Mixup blends with ``lam``; CutMix pastes the partner's cells inside ``box`` scaled to the
        ``h x w`` grid with rounded edges (so the pasted cells approximate the pixel box).
        """
        if self.mode != "cutmix":
            return self.mix_targets(maps)
        return self.paste(maps)

    def paste(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, C, h, w]`` with the partner's cells inside ``box`` (scaled to ``h x w``,
        edges rounded, so on a coarse grid the cells approximate the pixel box)."""
        assert self.box is not None
        h, w = x.shape[-2:]
        x0, y0, x1, y1 = (round(v * s) for v, s in zip(self.box, (w, h, w, h), strict=True))
        out = x.clone()
        out[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        return out


def sample_mix(cfg: AugmentConfig, size: tuple[int, int]) -> MixParams:
    """Draw one batch's Mixup/CutMix decision from the global RNG (timm ``Mixup``, batch mode)."""
    use_mixup, use_cutmix = cfg.mixup_alpha > 0, cfg.cutmix_alpha > 0
    if not (use_mixup or use_cutmix) or float(torch.rand(())) >= cfg.mix_rate:
        return MixParams()
    cutmix = use_cutmix and (not use_mixup or float(torch.rand(())) < cfg.switch_rate)
    alpha = cfg.cutmix_alpha if cutmix else cfg.mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    if not cutmix:
        return MixParams("mixup", lam)
    h, w = size
    cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
    y0, x0, y1, x1 = cut_box((h, w), lam, (cy, cx))
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # timm's correct_lam
    return MixParams("cutmix", lam, (x0 / w, y0 / h, x1 / w, y1 / h))


def apply_mix(images: torch.Tensor, mix: MixParams) -> torch.Tensor:
    """Mix ``images`` ``[B, C, H, W]`` with their reverse as ``mix`` says."""
    if mix.mode == "mixup":
        return images * mix.lam + images.flip(0) * (1.0 - mix.lam)
    if mix.mode == "cutmix":
        return mix.paste(images)
    return images


# --------------------------------------------------------------------------- the pipeline


def alternate_flips(indices: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
    """``[B]`` bool: whether dataset images ``indices`` are flipped in ``epoch``.

    A fixed random half of the dataset (a hash of ``seed`` and the index, so the same on every
    rank and after a resume) is flipped in even epochs, the other half in odd ones.
    """
    x = indices.detach().cpu().numpy().astype(np.uint64) + np.uint64(seed & (2**64 - 1))
    # splitmix64's finaliser: neighbouring indices get independent bits
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    bits = ((x >> np.uint64(40)) & np.uint64(1)).astype(bool) ^ bool(epoch % 2)
    return torch.from_numpy(bits)


@dataclass
class AugmentedBatch:
    """One augmented training batch.

    Attributes:
        images: normalised float32 ``[B, 3, h, w]`` on the input's device.
        targets: soft targets ``[B, num_classes]`` (label smoothing and mixing applied).
        labels: the integer labels before mixing ``[B]``.
        boxes: crop boxes ``[B, 4]`` normalised ``(x0, y0, x1, y1)`` of the loaded image.
        flips: ``[B]`` bool, horizontal flip applied after the crop.
        mix: how the batch was mixed (apply ``mix.mix_maps`` to dense token targets).
    """

    images: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    mix: MixParams = field(default_factory=MixParams)


class TrainAugment:
    """The training augmentation, ``uint8 [B, 3, H, W]`` + labels -> :class:`AugmentedBatch`.

    Call it on batches already on the training device. It is not an ``nn.Module`` on purpose:
    its kornia parts hold only sampling ranges, which kornia expects on the CPU whatever the
    device of the images, so there is nothing to ``.to(device)``. Checkpoint it with
    :meth:`state_dict` / :meth:`load_state_dict` (the generator state).

    Args:
        cfg: what to apply (the ``aug`` section of the run's config; checked with
            :func:`check_config`; :func:`imagenet_recipe` is the ImageNet recipe).
        img_size: output ``(h, w)`` or an int (the model's input size); ``cfg.size_schedule``
            can give an epoch another one (:meth:`size_at`).
        num_classes: width of the soft targets.
        smoothing: label smoothing of the soft targets (``loss.label_smoothing``).
        mean, std: normalisation (the model's pretrained cfg).
        seed: seeds the module's generator (the engine reseeds it per step); with
            ``cfg.hflip == "alternate"`` it also picks which half of the images an epoch flips.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        *,
        img_size: int | tuple[int, int],
        num_classes: int,
        smoothing: float = 0.0,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        seed: int = 0,
    ) -> None:
        check_config(cfg)
        if not 0 <= smoothing <= 1:
            raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
        self.cfg = replace(cfg)  # a copy: the kornia parts below are built from these values
        self.smoothing = smoothing
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.rotate = K.RandomRotation(cfg.rotation, p=1.0) if cfg.rotation > 0 else None
        self.randaugment = (
            TimmRandAugment(parse_randaugment(cfg.randaugment)) if cfg.randaugment else None
        )
        cj = cfg.color_jitter
        self.color_jitter = K.ColorJitter(cj, cj, cj, 0.0, p=1.0) if cj > 0 else None
        self.erase = (
            K.RandomErasing(scale=(0.02, 1 / 3), ratio=(0.3, 3.3), value=0.0, p=cfg.erase_rate)
            if cfg.erase_rate > 0
            else None
        )

    def size_at(self, epoch: int) -> tuple[int, int]:
        """The training image size of ``epoch``: ``cfg.size_schedule``'s step, else the model's."""
        size = self.img_size
        for start, side in self.cfg.size_schedule or ():
            if epoch >= start:
                size = (side, side)
        return size

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator state: restoring it repeats the same augmentations from here on."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        indices: torch.Tensor | None = None,
        epoch: int = 0,
    ) -> AugmentedBatch:
        """Augment a batch; ``labels`` are integer class indices ``[B]``.

        ``indices`` (the images' dataset indices) are needed by ``cfg.hflip == "alternate"``
        only; ``epoch`` by that and by ``cfg.size_schedule``.
        """
        if self.cfg.hflip == "alternate" and indices is None:
            raise ValueError("hflip='alternate' needs the batch's dataset indices")
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected uint8 [B, 3, H, W] images, got {images.dtype} {tuple(images.shape)}"
            )
        seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.random.default_generator.manual_seed(seed)
            if devices:
                with torch.cuda.device(images.device):
                    torch.cuda.manual_seed(seed)
            return self._augment(images, labels.to(images.device), indices, epoch)

    def _augment(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | None,
        epoch: int,
    ) -> AugmentedBatch:
        cfg, b, dev = self.cfg, images.shape[0], images.device
        if cfg.scale is None:
            boxes = full_boxes(b, device=dev)
        else:
            boxes = sample_rrc_boxes(b, cfg.scale, cfg.ratio, device=dev)
        if cfg.translate:
            boxes = shift_boxes(boxes, cfg.translate, images.shape[-2:])
        if cfg.hflip == "alternate":
            flips = alternate_flips(indices, epoch, self.seed).to(dev)
        else:
            flips = (torch.rand(b) < cfg.hflip_rate).to(dev)
        x = crop_resize(images.float() / 255.0, boxes, self.img_size, flips, mode=cfg.interpolation)
        x = x.clamp_(0.0, 1.0)
        size = self.size_at(epoch)
        if size != self.img_size:  # progressive resizing: the same crop, fewer pixels
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)
        if self.rotate is not None:
            x = self.rotate(x)
        if self.randaugment is not None:
            chunks = []
            for chunk in x.split(cfg.randaugment_group):
                self.randaugment.sample_level()
                chunks.append(self.randaugment(chunk))
            x = torch.cat(chunks)
        if self.color_jitter is not None:
            x = self.color_jitter(x)
        x = (x - self.mean.to(dev)) / self.std.to(dev)
        if self.erase is not None:
            keep = self.erase(torch.ones_like(x[:, :1])) > 0.5
            fill = torch.randn_like(x) if cfg.erase_mode == "pixel" else torch.zeros_like(x)
            x = torch.where(keep, x, fill)
        mix = sample_mix(cfg, size)
        x = apply_mix(x, mix)
        targets = mix.mix_targets(one_hot_smooth(labels, self.num_classes, self.smoothing))
        return AugmentedBatch(x.contiguous(), targets, labels, boxes, flips, mix)
