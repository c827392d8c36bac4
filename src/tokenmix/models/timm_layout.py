"""ConvFormer / CAFormer checkpoints in timm's key layout <-> ours.

timm (huggingface/pytorch-image-models, ``timm/models/metaformer.py``, checked against timm
1.0.31) re-implements the MetaFormer baselines with other module names, and its Hugging Face
repositories (``timm/caformer_s18.sail_in1k`` ...) hold the sail-sg weights re-saved in that
layout. The two layouts hold the same tensors: converting is a renaming, plus a reshape of the
pointwise layers, which timm runs as 1x1 convolutions in its channels-first stages (every stage
without attention) and we run as linear layers on channels-last maps.

timm -> ours:

- ``stem.conv.*`` -> ``downsample_layers.0.conv.*``; ``stem.norm.weight`` ->
  ``downsample_layers.0.post_norm.weight``
- ``stages.i.downsample.conv.*`` -> ``downsample_layers.i.conv.*``;
  ``stages.i.downsample.norm.weight`` -> ``downsample_layers.i.pre_norm.weight``
- ``stages.i.blocks.j.<rest>`` -> ``stages.i.j.<rest>`` (1x1 conv ``[out, in, 1, 1]`` -> linear)
- ``head.norm.*`` -> ``norm.*``; ``head.fc.fc1`` / ``head.fc.norm`` / ``head.fc.fc2`` ->
  ``head.fc1`` / ``head.norm`` / ``head.fc2``; a linear ``head.fc.*`` -> ``head.*``

One setting differs too: timm's MLP classifier head normalises with ``eps=1e-6`` where the
official code (and ours) uses ``1e-5``. :func:`match_timm_numerics` sets timm's value on a model
that was loaded from a timm-layout checkpoint, so it gives timm's logits, not only its features
(with randomly initialised caformer_s18 weights the logits otherwise differ by about 2e-4).

Block internals (``norm1``, ``token_mixer.pwconv1`` / ``dwconv`` / ``qkv`` / ``proj``,
``res_scale1.scale``, ``layer_scale1.scale``, ``mlp.fc1``, StarReLU ``scale`` / ``bias``) keep
their names. Checked by ``tests/test_timm.py``: timm's own ``caformer_s18`` / ``convformer_s18``
saved in its layout load into ours and give its outputs (<= 1e-5), and the key manifests of
every ConvFormer / CAFormer size convert both ways.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["is_timm_metaformer", "match_timm_numerics", "timm_to_tokenmix", "tokenmix_to_timm"]

TIMM_HEAD_NORM_EPS = 1e-6  # timm's MlpHead LayerNorm; sail-sg/metaformer uses nn.LayerNorm (1e-5)

# Block weights that are 1x1 convolutions [out, in, 1, 1] in timm's channels-first stages and
# linear layers [out, in] in ours.
_POINTWISE = (
    "mlp.fc1.weight",
    "mlp.fc2.weight",
    "token_mixer.pwconv1.weight",
    "token_mixer.pwconv2.weight",
)


def is_timm_metaformer(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` is in timm's MetaFormer layout (its stem and ``stages.N.blocks.M``)."""
    return "stem.conv.weight" in state and any(k.startswith("stages.0.blocks.") for k in state)


def timm_to_tokenmix(state: Mapping[str, Any]) -> dict[str, Any]:
    """A timm ConvFormer / CAFormer state_dict in our layout (same tensors, renamed).

    Keys the table in the module docstring does not cover are kept as they are, so the strict
    load that follows reports them instead of this function dropping them.
    """
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = _timm_key_to_ours(key)
        if new.endswith(_POINTWISE) and new.startswith("stages.") and value.ndim == 4:
            value = value.flatten(1)  # [out, in, 1, 1] -> [out, in]
        out[new] = value
    return out


def tokenmix_to_timm(state: Mapping[str, Any]) -> dict[str, Any]:
    """Our ConvFormer / CAFormer state_dict in timm's layout (the inverse of :func:`timm_to_tokenmix`).

    A stage holding attention blocks (``token_mixer.qkv``) stays channels-last in timm, so its
    pointwise layers stay linear; every other stage gets 1x1 convolutions.
    """
    attention_stages = {k.split(".")[1] for k in state if k.startswith("stages.") and ".qkv." in k}
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        if (
            parts[0] == "stages"
            and parts[1] not in attention_stages
            and key.endswith(_POINTWISE)
            and value.ndim == 2
        ):
            value = value[:, :, None, None]
        out[_our_key_to_timm(key)] = value
    return out


def match_timm_numerics(model: nn.Module) -> list[str]:
    """Give ``model`` timm's settings where they differ from the official ones; say which.

    Only the MLP head's LayerNorm epsilon differs (see the module docstring).
    """
    norm = getattr(getattr(model, "head", None), "norm", None)
    if not isinstance(norm, nn.LayerNorm) or norm.eps == TIMM_HEAD_NORM_EPS:
        return []
    old, norm.eps = norm.eps, TIMM_HEAD_NORM_EPS
    return [f"head.norm.eps {old:g} -> {TIMM_HEAD_NORM_EPS:g} (timm's value)"]


def _timm_key_to_ours(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "stem":
        name = {"conv": "conv", "norm": "post_norm"}.get(parts[1], parts[1])
        return ".".join(["downsample_layers", "0", name, *parts[2:]])
    if parts[0] == "stages" and len(parts) > 3:
        if parts[2] == "downsample":
            name = {"conv": "conv", "norm": "pre_norm"}.get(parts[3], parts[3])
            return ".".join(["downsample_layers", parts[1], name, *parts[4:]])
        if parts[2] == "blocks":
            return ".".join(["stages", parts[1], *parts[3:]])
    if key.startswith("head.norm."):
        return "norm." + key[len("head.norm.") :]
    if key.startswith("head.fc."):
        return "head." + key[len("head.fc.") :]  # MLP head: head.fc1 ...; linear: head.weight
    return key


def _our_key_to_timm(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "downsample_layers" and len(parts) > 2:
        name = {"post_norm": "norm", "pre_norm": "norm"}.get(parts[2], parts[2])
        prefix = ["stem"] if parts[1] == "0" else ["stages", parts[1], "downsample"]
        return ".".join([*prefix, name, *parts[3:]])
    if parts[0] == "stages" and len(parts) > 2:
        return ".".join(["stages", parts[1], "blocks", *parts[2:]])
    if parts[0] == "norm":
        return "head." + key
    if parts[0] == "head":
        return "head.fc." + key[len("head.") :]
    return key
