"""``create_model``: build a registered architecture, apply overrides, load weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import load_weights
from .registry import get_entrypoint, get_pretrained_cfg, split_model_name


def create_model(
    name: str,
    pretrained: bool | str | Path | None = None,
    *,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    features_only: bool = False,
    allow_nonfinite: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build ``name`` (``arch`` or ``arch.tag``) and optionally load weights into it.

    Args:
        name: a registered architecture, optionally with a weight tag (``lvvit_s.tl_in1k_384``).
        pretrained: ``True`` for the tag's official weights (downloaded and cached), a path to a
            checkpoint (official ``.pth``/``.pt``, Paddle ``.pdparams``, ``.safetensors``), or
            ``None``/``False`` for a fresh initialisation.
        num_classes: classifier size; when it differs from the checkpoint's, the classifier is
            re-initialised (and a warning says so).
        img_size: input size; resolution-dependent weights (frequency filters, position
            embeddings) are resized to it when a checkpoint is loaded.
        features_only: build a backbone whose ``forward`` returns the stage feature maps of
            ``out_indices`` (described by ``model.feature_info``); a classification checkpoint
            loads into it, its final norm and head dropped with a note in the log. Add
            ``feature_norms=True`` (MetaFormer) for the official dense-prediction backbone.
        allow_nonfinite: load a checkpoint path even if some weights are NaN or inf (refused by
            default: such a model evaluates to chance level without any error). Published
            weights (``pretrained=True``) are always checked.
        **kwargs: architecture overrides passed to the model class, e.g. ``depths=(1, 1, 2, 1)``.
    """
    if allow_nonfinite and pretrained is True:
        raise ValueError("allow_nonfinite applies to a checkpoint path, not published weights")
    arch, _ = split_model_name(name)
    builder = get_entrypoint(arch)
    cfg = get_pretrained_cfg(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    kwargs.setdefault("img_size", img_size if img_size is not None else tuple(cfg.input_size[1:]))
    if features_only:
        kwargs["features_only"] = True
    model = builder(**kwargs)
    height, width = model.img_size
    cfg = replace(cfg, input_size=(cfg.input_size[0], height, width))
    own = getattr(model, "pretrained_cfg", None)  # what the built architecture says
    if own is not None and own.first_conv:
        cfg = replace(cfg, first_conv=own.first_conv)
    if cfg.label_set and model.num_classes != cfg.num_classes:
        cfg = replace(cfg, label_set="")  # the weights' class names no longer name the outputs
    model.pretrained_cfg = cfg
    if pretrained is True:
        from .hub import load_pretrained

        load_pretrained(model, name)
    elif pretrained:
        load_weights(model, pretrained, allow_nonfinite=allow_nonfinite)
    return model
