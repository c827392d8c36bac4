"""Model registry: architecture names -> builder functions, plus their pretrained configs.

A name is ``arch`` or ``arch.tag``; the tag picks one of the architecture's pretrained configs
(weights, eval transform), e.g. ``lvvit_s.tl_in1k_384``. Resolution and training data live in
the tag, never in the architecture name.

Published weights whose tag says they were trained (or fine-tuned) on ImageNet-1k (``in1k`` in
the tag: ``in1k``, ``in21k_ft_in1k_384``, ``tl_in1k``) classify its 1000 classes; their cfg gets
``label_set="imagenet-1k"``, so ``cfg.label_names`` names the outputs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from .pretrained import PretrainedCfg
from .weights import WEIGHTS, canonical_tag

_ENTRYPOINTS: dict[str, Callable[..., Any]] = {}
_CFGS: dict[str, dict[str, PretrainedCfg]] = {}
_DEFAULT_TAG: dict[str, str] = {}

F = TypeVar("F", bound=Callable[..., Any])


def register_model(*cfgs: PretrainedCfg) -> Callable[[F], F]:
    """Register a builder under its function name with its pretrained configs.

    ``cfgs[0]`` is the family default (eval transform, classifier names); the published weights
    listed in :data:`tokenmix.models.weights.WEIGHTS` are applied on top of it, the first being
    the default tag. Every architecture has at least one cfg, so its eval transform is known.
    ImageNet-1k weights get their label set (see the module docstring).
    """

    def wrap(fn: F) -> F:
        name = fn.__name__
        if name in _ENTRYPOINTS:
            raise ValueError(f"model {name!r} is registered twice")
        _ENTRYPOINTS[name] = fn
        base = cfgs[0] if cfgs else PretrainedCfg()
        entries = [replace(base, **e) for e in WEIGHTS.get(name, [])] or list(cfgs) or [base]
        entries = [_with_label_set(c) for c in entries]
        _CFGS[name] = {c.tag: c for c in entries}
        _DEFAULT_TAG[name] = entries[0].tag
        return fn

    return wrap


def _with_label_set(cfg: PretrainedCfg) -> PretrainedCfg:
    """ImageNet-1k weights (``in1k`` in the tag, 1000 classes) name the ImageNet-1k classes."""
    in1k = cfg.has_weights and cfg.num_classes == 1000 and "in1k" in cfg.tag.split("_")
    return replace(cfg, label_set="imagenet-1k") if in1k and not cfg.label_set else cfg


def split_model_name(name: str) -> tuple[str, str | None]:
    """``'lvvit_s.tl_in1k_384'`` -> ``('lvvit_s', 'tl_in1k_384')``; no tag -> ``None``."""
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def is_model(name: str) -> bool:
    return split_model_name(name)[0] in _ENTRYPOINTS


def get_entrypoint(name: str) -> Callable[..., Any]:
    arch, _ = split_model_name(name)
    try:
        return _ENTRYPOINTS[arch]
    except KeyError:
        close = difflib_close(arch)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {arch!r}.{hint} `tokenmix models` lists them all."
        ) from None


def difflib_close(name: str) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, list(_ENTRYPOINTS), n=3)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The cfg for ``arch`` (its default tag) or ``arch.tag``; an unknown tag lists the known."""
    arch, tag = split_model_name(name)
    get_entrypoint(arch)
    tags = _CFGS[arch]
    tag = _DEFAULT_TAG[arch] if tag is None else canonical_tag(arch, tag)  # timm tag names too
    if tag not in tags:
        known = ", ".join(f"{arch}.{t}" if t else arch for t in tags)
        raise ValueError(f"model {arch!r} has no weights tagged {tag!r}; known: {known}")
    return tags[tag]


def list_pretrained_cfgs(arch: str) -> list[PretrainedCfg]:
    get_entrypoint(arch)
    return list(_CFGS[arch].values())


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered names matching a shell-style pattern (``'dfformer_*'``), sorted.

    With ``pretrained=True`` the result lists ``arch.tag`` for every published weight instead.
    """
    names: list[str] = []
    for arch in sorted(_ENTRYPOINTS):
        if pretrained:
            names += [c.full_name(arch) for c in _CFGS[arch].values() if c.has_weights]
        else:
            names.append(arch)
    return [n for n in names if fnmatch.fnmatch(n, pattern)]
