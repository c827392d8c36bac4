"""Inference helpers shared by ``tokenmix eval``/``predict``/``export``/``convert``/``relabel``
and training's prediction grid: loading a model with its class names and training resolution
from any checkpoint, the eval preprocessing it expects, top-k predictions, and picking the
images a grid shows."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from tokenmix.config import Config, load_config
from tokenmix.data.datasets import ImageDataset, SkippedSample
from tokenmix.data.transforms import Normalize, ResizeCenterCrop, eval_transforms
from tokenmix.models.pretrained import PretrainedCfg

from .build import build_model
from .checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    latest_checkpoint,
    read_metadata,
    resolve_weights,
)

T = TypeVar("T")


@torch.no_grad()
def predict_topk(
    model: nn.Module,
    images: torch.Tensor,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    classes: Sequence[str],
    k: int = 5,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    batch_size: int = 64,
) -> list[list[tuple[str, float]]]:
    """Per image, the ``k`` most probable ``(class name, probability)`` pairs, best first.

    Args:
        model: a classifier (put in eval mode here).
        images: uint8 ``[N, 3, H, W]`` with the eval load transform applied, on any device.
        prepare: device-side normalisation.
        classes: names of the model's outputs.
        k: how many labels per image (at most the number of classes).
        autocast: mixed-precision context for the forward pass.
        batch_size: images per forward pass.
    """
    model.eval()
    device = next(model.parameters()).device
    k = min(k, len(classes))
    out: list[list[tuple[str, float]]] = []
    for chunk in images.split(batch_size):
        with autocast():
            logits = model(prepare(chunk.to(device)))
        probs, idx = logits.float().softmax(-1).topk(k, dim=-1)
        for p_row, i_row in zip(probs.tolist(), idx.tolist(), strict=True):
            out.append([(classes[i], p) for i, p in zip(i_row, p_row, strict=True)])
    return out


def grid_samples(dataset: ImageDataset, count: int) -> tuple[torch.Tensor, list[int]]:
    """Up to ``count`` images spread evenly over ``dataset``, with their indices.

    Samples the dataset cannot read (:class:`~tokenmix.data.datasets.SkippedSample` under
    ``bad_images="skip"``) are left out, so the grid may hold fewer than ``count``: the end of a
    run must not fail on a file that evaluation already skipped and counted.

    Returns:
        uint8 ``[N, 3, H, W]`` images as ``dataset[i]`` gives them (``N`` may be 0), and the
        ``N`` dataset indices they came from.
    """
    n = min(count, len(dataset))
    images: list[torch.Tensor] = []
    picks: list[int] = []
    for i in np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist():
        item = dataset[i]
        if isinstance(item, SkippedSample):
            continue
        images.append(item[0])
        picks.append(i)
    if not images:
        h, w = dataset.load_size
        return torch.empty(0, 3, h, w, dtype=torch.uint8), picks
    return torch.stack(images), picks


@dataclass
class LoadedModel:
    """A model ready for inference, with what is known about its outputs.

    Attributes:
        model: in eval mode, on the requested device.
        classes: output names when the checkpoint records them (tokenmix training runs).
        config: the training config stored in the checkpoint, if any (its ``model.img_size``
            is the size the model was built at here).
        source: the weights file.
        name: the architecture (``config.model.name`` for a tokenmix checkpoint).
    """

    model: nn.Module
    classes: list[str] | None
    config: Config | None
    source: str
    name: str | None = None


@dataclass(frozen=True)
class Preprocessing:
    """The eval transform a model expects: resize by ``1 / crop_pct``, centre crop to
    ``input_size[1:]`` with ``interpolation``, then ``(x / 255 - mean) / std``."""

    input_size: tuple[int, int, int]
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def transforms(self) -> tuple[ResizeCenterCrop, Normalize]:
        """``(worker_transform, device_normalize)`` for this preprocessing."""
        return eval_transforms(
            PretrainedCfg(
                input_size=self.input_size,
                crop_pct=self.crop_pct,
                interpolation=self.interpolation,
                mean=self.mean,
                std=self.std,
            )
        )


def eval_preprocessing(
    loaded: LoadedModel,
    *,
    img_size: int | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> Preprocessing:
    """The eval transform for ``loaded``: each value given here, else the one its training run
    used (``data.*`` of a tokenmix checkpoint), else the model's pretrained cfg.

    ``eval``, ``predict`` and ``export`` all take it from here, so an image is prepared the same
    way in each, and the way the run's own evaluation prepared it.
    """
    cfg = loaded.model.pretrained_cfg
    data = loaded.config.data if loaded.config is not None else None
    height, width = cfg.input_size[1:] if img_size is None else (img_size, img_size)
    return Preprocessing(
        input_size=(cfg.input_size[0], height, width),
        crop_pct=_first(crop_pct, data and data.crop_pct, cfg.crop_pct),
        interpolation=_first(interpolation, data and data.interpolation, cfg.interpolation),
        mean=tuple(_first(mean, data and data.mean, cfg.mean)),
        std=tuple(_first(std, data and data.std, cfg.std)),
    )


def _first(*values: T | None) -> T:
    """The first value that is not None (the last one never is)."""
    return next(v for v in values if v is not None)


def load_for_inference(
    checkpoint: str | Path | None,
    model_name: str | None = None,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    use_ema: bool = False,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Build a model and load weights for evaluation, prediction, export or conversion, strictly.

    Args:
        checkpoint: a tokenmix run folder, step checkpoint or weights file (the architecture,
            its overrides, the training resolution and the class names come from the config
            stored inside), a foreign checkpoint (official ``.pth``, ``.pdparams``:
            ``model_name`` required), or ``None`` for the published weights of ``model_name``.
        model_name: architecture (optionally ``arch.tag``); must match a tokenmix checkpoint's.
        num_classes: classifier size for a foreign checkpoint (default: the model's default).
            A checkpoint whose classifier has another size is an error, not a silent re-init.
            A tokenmix checkpoint's own class count always wins.
        img_size: build the model at this resolution instead of the checkpoint's (the
            resolution-dependent weights, filters and position embeddings, are resized).
        use_ema: the EMA weights: the step checkpoint's ``ema.safetensors`` (a run folder: its
            latest step's), or a foreign checkpoint's EMA entry.
        device: where to put the model.
    """
    from tokenmix.models import create_model, load_weights

    config, classes = None, None
    if checkpoint is None:
        if model_name is None:
            raise ValueError("give a checkpoint, or a model name to use its published weights")
        model = create_model(model_name, pretrained=True, img_size=img_size)
        source, name = model_name, model_name
        # published ImageNet weights name their classes (predict prints names, not indices)
        classes = list(getattr(model.pretrained_cfg, "label_names", None) or []) or None
    else:
        path = resolve_weights(checkpoint)
        if use_ema:
            path = _ema_file(Path(checkpoint))
        meta = read_metadata(path) if path.suffix == ".safetensors" else {}
        if "config" in meta:
            config = load_config(base=json.loads(meta["config"]))
            classes = json.loads(meta["classes"])
            if model_name is not None and model_name != config.model.name:
                raise ValueError(f"{path} holds a {config.model.name}, not a {model_name}")
            model_cfg = dataclasses.replace(
                config.model, pretrained=False, img_size=img_size or config.model.img_size
            )
            config = dataclasses.replace(config, model=model_cfg)
            model = build_model(model_cfg, num_classes=len(classes))
            name = config.model.name
        else:
            if model_name is None:
                raise ValueError(f"{path} does not record its architecture; pass --model NAME")
            model = create_model(model_name, num_classes=num_classes, img_size=img_size)
            name = model_name
        report = load_weights(model, path, use_ema=use_ema and "config" not in meta)
        if report.reinitialized:
            raise ValueError(
                f"{path}: its classifier ({', '.join(report.reinitialized)}) is for another number "
                f"of classes than {getattr(model, 'num_classes', '?')}; pass the matching class "
                "count (--num-classes)"
            )
        source = str(path)
    return LoadedModel(model.eval().to(device), classes, config, source, name)


def _ema_file(given: Path) -> Path:
    """The EMA weights of a step checkpoint (of a run folder: its latest one's); a file other
    than a step's ``model.safetensors`` as it is (a foreign checkpoint's EMA entry is picked
    when loading it)."""
    if given.is_file() and given.name != MODEL_FILE:
        return given
    step = given.parent if given.is_file() else given
    if not (step / MODEL_FILE).is_file():  # a run folder
        ckpt_dir = step / "checkpoints" if (step / "checkpoints").is_dir() else step
        step = latest_checkpoint(ckpt_dir) or step
    if not (step / EMA_FILE).is_file():
        raise FileNotFoundError(
            f"{step}: no EMA weights ({EMA_FILE}); the run trained with ema.enabled=false"
        )
    return step / EMA_FILE
