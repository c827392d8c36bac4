"""Inference helpers shared by ``tokenmix eval``/``predict`` and training's prediction grid:
loading a model with its class names from any checkpoint, top-k predictions, and picking the
images a grid shows."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tokenmix.config import Config, load_config
from tokenmix.data.datasets import ImageDataset, SkippedSample

from .build import build_model
from .checkpoint import read_metadata, resolve_weights


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
        config: the training config stored in the checkpoint, if any.
        source: the weights file.
    """

    model: nn.Module
    classes: list[str] | None
    config: Config | None
    source: str


def load_for_inference(
    checkpoint: str | Path | None,
    model_name: str | None = None,
    *,
    num_classes: int | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Build a model and load weights for evaluation or prediction, strictly.

    Args:
        checkpoint: a tokenmix run folder, step checkpoint or weights file (the architecture,
            its overrides and the class names come from the config stored inside), a foreign
            checkpoint (official ``.pth``, ``.pdparams``: ``model_name`` required), or ``None``
            for the published weights of ``model_name``.
        model_name: architecture (optionally ``arch.tag``); must match a tokenmix checkpoint's.
        num_classes: classifier size for a foreign checkpoint (default: the model's default).
            A checkpoint whose classifier has another size is an error, not a silent re-init.
        device: where to put the model.
    """
    from tokenmix.models import create_model, load_weights

    config, classes = None, None
    if checkpoint is None:
        if model_name is None:
            raise ValueError("give a checkpoint, or a model name to use its published weights")
        model = create_model(model_name, pretrained=True)
        source = model_name
    else:
        path = resolve_weights(checkpoint)
        meta = read_metadata(path) if path.suffix == ".safetensors" else {}
        if "config" in meta:
            config = load_config(base=json.loads(meta["config"]))
            classes = json.loads(meta["classes"])
            if model_name is not None and model_name != config.model.name:
                raise ValueError(f"{path} holds a {config.model.name}, not a {model_name}")
            model_cfg = dataclasses.replace(config.model, pretrained=False)
            model = build_model(model_cfg, num_classes=len(classes))
        else:
            if model_name is None:
                raise ValueError(f"{path} does not record its architecture; pass --model NAME")
            model = create_model(model_name, num_classes=num_classes)
        report = load_weights(model, path)
        if report.reinitialized:
            raise ValueError(
                f"{path}: its classifier ({', '.join(report.reinitialized)}) is for another number "
                f"of classes than {getattr(model, 'num_classes', '?')}; pass the matching class count"
            )
        source = str(path)
    return LoadedModel(model.eval().to(device), classes, config, source)
