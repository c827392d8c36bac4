"""tokenmix's models inside timm: ``timm.create_model("dfformer_s18")`` after :func:`register`.

timm (checked with 1.0.31) has no plugin entry points: it finds models only in its own
modules, so an outside library registers itself by calling timm's ``register_model``. Do it
once, before the first ``timm.create_model``::

    import timm
    import tokenmix.timm

    tokenmix.timm.register()
    model = timm.create_model("dfformer_s18", pretrained=True)
    config = timm.data.resolve_data_config(model=model)

Everything built on ``timm.create_model`` then finds them too, e.g. the ``TIMMBackbone`` of
mmpretrain (used by mmdet / mmseg configs): ``backbone=dict(type="mmpretrain.TIMMBackbone",
model_name="dfformer_s18", features_only=True, pretrained=True)``, with ``register()`` called
in a module the config imports (``custom_imports``).

Only names timm does not have are registered by default: DFFormer, CDFFormer, GFFormer,
LV-ViT and the tiny ``test_*`` variants. timm has its own ConvFormer and CAFormer, with its
own Hub weights in its key layout; replacing them would change what ``timm.create_model(
"caformer_s18")`` means for every other user of timm in the process, so those names stay
timm's (``overwrite=True`` replaces them anyway). Our loader reads timm's layout, so
``tokenmix.create_model("caformer_s18", pretrained="hf-hub:timm/caformer_s18.sail_in1k")``
gives timm's weights in our model.

A registered entry builds the model with :func:`tokenmix.create_model`, which loads the
weights (``pretrained=True``: our published files and cache; a tag from timm's name,
``"dfformer_s18.in1k"``, or its ``pretrained_cfg`` argument picks them). timm's
``pretrained_cfg_overlay={"file": path}`` loads a local checkpoint; other overlay keys are
refused, since the eval transform lives in our cfg (``model.pretrained_cfg``, a mapping timm
reads).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .extras import require
from .models import create_model, list_models, list_pretrained_cfgs
from .models.pretrained import PretrainedCfg

__all__ = ["register", "registered"]

# read by timm's register_model: arch -> timm DefaultCfg (its tags and pretrained cfgs)
default_cfgs: dict[str, Any] = {}
_REGISTERED: list[str] = []


def register(names: list[str] | None = None, *, overwrite: bool = False) -> list[str]:
    """Register tokenmix architectures with timm's model registry; idempotent.

    Args:
        names: architectures to register (default: every tokenmix architecture).
        overwrite: also replace architectures timm already has (``caformer_*``,
            ``convformer_*``); by default they are skipped and stay timm's own.

    Returns:
        The names registered by this call (those registered before are not repeated).

    Raises:
        MissingExtraError: timm is not installed (``pip install 'tokenmix[timm]'``).
        ValueError: ``names`` holds a name tokenmix does not have.
    """
    require("timm", "timm", "registering tokenmix models with timm")
    from timm.models import generate_default_cfgs, is_model, register_model

    wanted = list_models() if names is None else list(names)
    unknown = [n for n in wanted if not list_models(n)]
    if unknown:
        raise ValueError(f"not tokenmix architectures: {', '.join(unknown)}")
    new = [n for n in wanted if n not in _REGISTERED and (overwrite or not is_model(n))]
    cfgs = {
        cfg.full_name(arch): _timm_cfg(arch, cfg)
        for arch in new
        for cfg in list_pretrained_cfgs(arch)
    }
    default_cfgs.update(generate_default_cfgs(cfgs))
    for arch in new:
        fn = _entrypoint(arch)
        globals()[arch] = fn  # timm lists it in this module's __all__
        register_model(fn)
        _REGISTERED.append(arch)
    return new


def registered() -> list[str]:
    """The architectures :func:`register` has put into timm's registry so far."""
    return list(_REGISTERED)


def _entrypoint(arch: str) -> Callable[..., nn.Module]:
    def entry(
        pretrained: bool = False,
        pretrained_cfg: str | Mapping[str, Any] | Any | None = None,
        pretrained_cfg_overlay: Mapping[str, Any] | None = None,
        cache_dir: Any = None,
        **kwargs: Any,
    ) -> nn.Module:
        if cache_dir is not None:
            raise ValueError(
                f"{arch}: tokenmix keeps its weights under TOKENMIX_HOME (or the Hugging Face "
                "cache); set that instead of timm's cache_dir"
            )
        tag = _tag_of(pretrained_cfg)
        overlay = dict(pretrained_cfg_overlay or {})
        file = overlay.pop("file", None) or _field(pretrained_cfg, "file")
        if overlay:
            raise ValueError(
                f"{arch}: pretrained_cfg_overlay keys {sorted(overlay)} are not supported (only "
                "'file'); the eval transform is the model's pretrained_cfg"
            )
        source = (file or True) if pretrained else None
        return create_model(f"{arch}.{tag}" if tag else arch, pretrained=source, **kwargs)

    entry.__name__ = entry.__qualname__ = arch
    entry.__module__ = __name__
    entry.__doc__ = f"tokenmix's ``{arch}`` for timm: ``tokenmix.create_model({arch!r}, ...)``."
    return entry


def _field(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key)
    return getattr(cfg, key, None)


def _tag_of(pretrained_cfg: Any) -> str | None:
    """timm passes the tag of ``"arch.tag"`` as ``pretrained_cfg``; or a cfg holding one."""
    if pretrained_cfg is None or isinstance(pretrained_cfg, str):
        return pretrained_cfg or None
    return _field(pretrained_cfg, "tag") or None


def _timm_cfg(arch: str, cfg: PretrainedCfg) -> Any:
    """Our cfg as timm's ``PretrainedCfg``: provenance and eval transform under timm's names."""
    from timm.models import PretrainedCfg as TimmCfg

    classifier = cfg.classifier[0] if len(cfg.classifier) == 1 else tuple(cfg.classifier)
    return TimmCfg(
        url=cfg.url or "",
        architecture=arch,
        tag=cfg.tag or None,
        input_size=tuple(cfg.input_size),
        interpolation=cfg.interpolation,
        crop_pct=cfg.crop_pct,
        crop_mode=getattr(cfg, "crop_mode", "center"),
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        num_classes=cfg.num_classes,
        first_conv=cfg.first_conv or None,
        classifier=classifier,
        license=cfg.license or None,
        origin_url=cfg.paper or None,
        notes=(cfg.notes,) if cfg.notes else None,
    )
