"""The MetaFormer family: DFFormer, CDFFormer, GFFormer, ConvFormer and CAFormer.

One skeleton (Yu et al., "MetaFormer Baselines for Vision", 2022) with pluggable token mixers:

- DFFormer / CDFFormer / GFFormer: Tatsunami & Taki, "FFT-based Dynamic Token Mixer for
  Vision", AAAI 2024; matches okojoalg/dfformer@2b757c5 ``models/dfformer.py``.
- ConvFormer / CAFormer: matches sail-sg/metaformer@64c534a ``metaformer_baselines.py``.

State-dict names, shapes and order equal the official ones, so official checkpoints load
strictly. Checked by ``tests/test_metaformer.py``: key manifests of every full-size variant and
the numeric cases in ``shared/reference/cases`` (max abs diff <= 1e-5 in float32).

Layout: the network runs channels-last (``[B, H, W, C]``) inside the stages, like the official
code, so the pointwise layers are plain matrix products; public feature maps are NCHW (NHWC on
request, without a copy).

Dense prediction (the paper's ADE20K Semantic FPN and COCO RetinaNet / Mask R-CNN backbones,
okojoalg/dfformer ``segmentation/`` and ``detection/``): ``features_only=True,
feature_norms=True`` is the official ``fork_feat=True`` backbone, one ``nn.LayerNorm(dim,
eps=1e-6)`` (with bias, the official ``output_norm``) named ``norm{i}`` on each output stage.
Build it at the dense input size (``img_size=(512, 512)`` for ADE20K, ``(800, 800)`` for COCO,
as the official backbones do) and the ImageNet filters are resized to it when loaded; the
feature norms, absent from a classification checkpoint, keep their fresh initialisation, as in
the official code. ``out_indices=(1, 2, 3)`` is the official ``FORK_LAST3`` (RetinaNet).
Checked by ``tests/test_segmentation.py`` and ``tests/test_interface.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import DropPath, LayerNormNoBias, Mlp, MlpHead, Scale, create_token_mixer
from ..layers.token_mixers import resize_complex_weight
from ..utils import to_2tuple
from .checkpoint import CheckpointError
from .features import FeatureInfo, feature_take_indices
from .pretrained import PretrainedCfg
from .registry import register_model

__all__ = ["MetaFormer", "MetaFormerBlock"]

log = logging.getLogger("tokenmix")


class Downsampling(nn.Module):
    """Conv downsampling with an optional LayerNorm before (stages 2-4) or after (stem)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int,
        padding: int,
        pre_norm: bool = False,
        post_norm: bool = False,
        hidden_chs: int | None = None,
    ) -> None:
        super().__init__()
        self.pre_norm = LayerNormNoBias(in_chs) if pre_norm else nn.Identity()
        self.pre_conv: nn.Module = nn.Identity()  # no weights: the official key set
        if hidden_chs is not None:  # a conv stem: 3x3 stride-1 conv and GELU first
            self.pre_conv = nn.Sequential(nn.Conv2d(in_chs, hidden_chs, 3, padding=1), nn.GELU())
            in_chs = hidden_chs
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding)
        self.post_norm = LayerNormNoBias(out_chs) if post_norm else nn.Identity()
        self.channels_last_input = pre_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_input:  # [B, H, W, C] from the previous stage
            x = self.pre_norm(x).permute(0, 3, 1, 2)
        return self.post_norm(self.conv(self.pre_conv(x)).permute(0, 2, 3, 1))


class MetaFormerBlock(nn.Module):
    """``x = res_scale(x) + mixer(norm(x))``; ``x = res_scale(x) + mlp(norm(x))``."""

    def __init__(
        self,
        dim: int,
        token_mixer: nn.Module,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = None,
        res_scale_init_value: float | None = None,
    ) -> None:
        super().__init__()

        def scale(v: float | None) -> nn.Module:
            return Scale(dim, v) if v else nn.Identity()

        self.norm1 = LayerNormNoBias(dim)
        self.token_mixer = token_mixer
        self.drop_path1 = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.layer_scale1 = scale(layer_scale_init_value)
        self.res_scale1 = scale(res_scale_init_value)
        self.norm2 = LayerNormNoBias(dim)
        self.mlp = Mlp(dim, mlp_ratio, drop_rate=drop_rate)
        self.drop_path2 = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.layer_scale2 = scale(layer_scale_init_value)
        self.res_scale2 = scale(res_scale_init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))
        return self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))


class MetaFormer(nn.Module):
    """Four-stage MetaFormer with a token mixer per stage.

    Args:
        depths: blocks per stage.
        dims: channels per stage.
        token_mixers: a mixer name for all stages, or one per stage (see
            ``tokenmix.layers.TOKEN_MIXERS``).
        img_size: input size the FFT filters are stored for (``H // 4`` ... ``H // 32`` with the
            official stem); other inputs work too, the filters are resized on the fly.
        mixer_kwargs: extra options per mixer name, e.g. ``{"dynamic_filter": {"num_filters": 2}}``.
        res_scale_init_values: per stage; ``None`` means no res_scale (the official default
            uses it in stages 3 and 4 only).
        num_classes: classifier outputs; 0 builds no classifier (``forward`` returns the pooled,
            normed ``num_features``, as timm's MetaFormer).
        head_type: ``"mlp"`` (the official MlpHead) or ``"linear"``.
        features_only: build without final norm and head; ``forward`` returns the maps of the
            ``out_indices`` stages (NCHW). A classification checkpoint loads into it: its final
            norm and head are dropped, with a note in the log.
        out_indices: the stages ``feature_info`` describes and a ``features_only`` model returns.
        feature_norms: with ``features_only``, a LayerNorm (eps 1e-6, with bias) on each output
            stage, named ``norm{i}``: the official dense-prediction backbone (``fork_feat``).
        stem_stride: stride of the stem convolution (official: 4). Small inputs keep more
            tokens with 2 or 1: at 32 px, stride 4 leaves 8x8 tokens in stage 1 and 1x1 in
            stage 4; stride 1 gives 32x32 ... 4x4. Filters are sized for the stride.
        stem_kernel: stem kernel size; None: 7 at stride 4 (official), 3 at strides 1 and 2.
            Padding keeps ``H / stem_stride`` outputs. Only the official stem (7, 4) loads
            the published weights.
        stem_hidden: a conv stem (as "Early Convolutions Help Transformers See Better"): a 3x3
            stride-1 convolution to this many channels and a GELU before the stem convolution
            (new weights ``downsample_layers.0.pre_conv.0``); None: the official single conv.
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (64, 128, 320, 512),
        token_mixers: str | Sequence[str] = "sepconv",
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        img_size: int | Sequence[int] = 224,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.0,
        layer_scale_init_values: float | Sequence[float | None] | None = None,
        res_scale_init_values: float | Sequence[float | None] | None = (None, None, 1.0, 1.0),
        head_type: str = "mlp",
        mixer_kwargs: dict[str, dict[str, Any]] | None = None,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        feature_norms: bool = False,
        stem_stride: int = 4,
        stem_kernel: int | None = None,
        stem_hidden: int | None = None,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        if feature_norms and not features_only:
            raise ValueError("feature_norms=True needs features_only=True (a dense backbone)")
        if head_type not in ("mlp", "linear"):
            raise ValueError(f"head_type must be 'mlp' or 'linear', got {head_type!r}")
        if stem_stride < 1:
            raise ValueError(f"stem_stride must be >= 1, got {stem_stride}")
        if stem_hidden is not None and stem_hidden < 1:
            raise ValueError(f"stem_hidden must be >= 1 channels or None, got {stem_hidden}")
        stem_kernel = stem_kernel or (7 if stem_stride == 4 else max(3, 2 * stem_stride - 1))
        if stem_kernel < stem_stride:
            raise ValueError(
                f"stem_kernel {stem_kernel} < stem_stride {stem_stride} would skip pixels"
            )
        if len(dims) != num_stages:
            raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} differ in length")
        mixers = (
            [token_mixers] * num_stages if isinstance(token_mixers, str) else list(token_mixers)
        )
        if len(mixers) != num_stages:
            raise ValueError(f"need one token mixer per stage ({num_stages}), got {mixers}")

        def per_stage(v: Any) -> list[Any]:
            return list(v) if isinstance(v, (list, tuple)) else [v] * num_stages

        layer_scales = per_stage(layer_scale_init_values)
        res_scales = per_stage(res_scale_init_values)
        mixer_kwargs = mixer_kwargs or {}
        self.img_size = to_2tuple(img_size)
        self.dims = tuple(dims)
        self.num_classes = 0 if features_only else num_classes
        self.num_features = dims[-1]
        self.head_type, self.head_dropout = head_type, head_dropout
        self.features_only = features_only
        self.out_indices = tuple(feature_take_indices(num_stages, out_indices)[0])
        self.grad_checkpointing = False
        # the conv that reads the image (timm tools adapt its input channels); a conv stem
        # puts its 3x3 conv first
        first = "pre_conv.0" if stem_hidden is not None else "conv"
        self.pretrained_cfg = PretrainedCfg(first_conv=f"downsample_layers.0.{first}")

        chans = [in_chans, *dims]
        self.downsample_layers = nn.ModuleList(
            [
                Downsampling(
                    in_chans,
                    dims[0],
                    stem_kernel,
                    stem_stride,
                    (stem_kernel - stem_stride + 1) // 2,  # official (7, 4): padding 2
                    post_norm=True,
                    hidden_chs=stem_hidden,
                )
            ]
            + [
                Downsampling(chans[i], chans[i + 1], 3, 2, 1, pre_norm=True)
                for i in range(1, num_stages)
            ]
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        self.reductions = [stem_stride * 2**i for i in range(num_stages)]
        first = 0
        for i in range(num_stages):
            reduction = self.reductions[i]
            size = (self.img_size[0] // reduction, self.img_size[1] // reduction)
            blocks = [
                MetaFormerBlock(
                    dims[i],
                    create_token_mixer(mixers[i], dims[i], size, **mixer_kwargs.get(mixers[i], {})),
                    mlp_ratio=mlp_ratio,
                    drop_rate=drop_rate,
                    drop_path_rate=rates[first + j],
                    layer_scale_init_value=layer_scales[i],
                    res_scale_init_value=res_scales[i],
                )
                for j in range(depths[i])
            ]
            first += depths[i]
            self.stages.append(nn.Sequential(*blocks))
        self.feature_info = self._feature_info()

        # the official fork_feat layout: norm0..norm3 in the state_dict right after the stages
        self.feature_norm_indices = self.out_indices if feature_norms else ()
        for i in self.feature_norm_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i], eps=1e-6))
        if features_only:
            self.norm = nn.Identity()
            self.head = nn.Identity()
        else:
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head = self._new_head(num_classes)
        self.head_hidden_size = (
            self.head.fc1.out_features if isinstance(self.head, MlpHead) else self.num_features
        )
        self.apply(self._init_weights)

    def _feature_info(self) -> FeatureInfo:
        return FeatureInfo(
            [
                {"num_chs": self.dims[i], "reduction": self.reductions[i], "module": f"stages.{i}"}
                for i in self.out_indices
            ]
        )

    def _new_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        if self.head_type == "mlp":
            return MlpHead(self.num_features, num_classes, head_dropout=self.head_dropout)
        return nn.Linear(self.num_features, num_classes)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # --- timm-style interface -------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names to exempt from weight decay beyond the 1-D ones (none here)."""
        return set()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head.fc2 if isinstance(self.head, MlpHead) else self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes``; 0 removes it, as timm's MetaFormer.

        With 0, ``forward`` returns the pooled, normed ``num_features`` (512 for the S models).
        Otherwise the MLP head's last layer is replaced and its hidden layers are kept (what
        loading a checkpoint with another class count does); a model without a head gets a
        fresh one. ``global_pool`` can only be ``"avg"``, the one pooling MetaFormer has.
        """
        if global_pool not in (None, "avg"):
            raise ValueError(f"MetaFormer pools by average only, got global_pool={global_pool!r}")
        if self.features_only and num_classes:
            raise ValueError("a features_only backbone has no final norm to put a classifier on")
        self.num_classes = num_classes
        if num_classes and isinstance(self.head, MlpHead):
            self.head.fc2 = nn.Linear(self.head.fc1.out_features, num_classes)
            self._init_weights(self.head.fc2)
        else:
            self.head = self._new_head(num_classes)
            self.head.apply(self._init_weights)
        self.head_hidden_size = (
            self.head.fc1.out_features if isinstance(self.head, MlpHead) else self.num_features
        )

    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample_layers[i](x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in self.stages[i]:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.stages[i](x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs for dense prediction, timm's signature.

        Args:
            indices: stages to return: ``None`` (``out_indices``), an int ``n`` (the last ``n``)
                or a list (negative numbers count from the end).
            norm: apply the per-output LayerNorms (``feature_norms=True``); a model without
                them has no per-stage norm and returns the raw maps, as timm's MetaFormer.
            stop_early: do not run the stages after the last one asked for; the returned final
                map is then that stage's.
            output_fmt: ``"NCHW"`` or ``"NHWC"`` (the layout the stages run in: no permute).
            intermediates_only: return only the list of maps (the stages after the last index
                are never run).

        Returns:
            ``(final_map, maps)``, or ``maps`` with ``intermediates_only``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages), indices, self.out_indices)
        stop = last + 1 if stop_early or intermediates_only else len(self.stages)
        nchw = output_fmt == "NCHW"
        feats = []
        for i in range(stop):
            x = self._run_stage(i, x)
            if i in take:
                y = getattr(self, f"norm{i}")(x) if norm and i in self.feature_norm_indices else x
                feats.append(y.permute(0, 3, 1, 2) if nchw else y)
        if intermediates_only:
            return feats
        return (x.permute(0, 3, 1, 2) if nchw else x), feats

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (timm's signature); returns the indices.

        ``out_indices`` and ``feature_info`` become ``indices``. ``prune_head`` removes the
        classifier (``num_classes`` 0); ``prune_norm``, or pruning any stage, removes the final
        norm (it only fits the last stage), so ``forward_head`` then returns the pooled map of
        the last kept stage (``num_features`` its channels).
        """
        take, last = feature_take_indices(len(self.stages), indices)
        cut = last < len(self.stages) - 1
        if cut and not prune_head and not isinstance(self.head, nn.Identity):
            raise ValueError("pruning stages leaves the classifier without its input; prune_head")
        for i in range(last + 1, len(self.stages)):
            if i in self.feature_norm_indices:
                delattr(self, f"norm{i}")
        self.stages = self.stages[: last + 1]
        self.downsample_layers = self.downsample_layers[: last + 1]
        if prune_norm or cut:
            self.norm = nn.Identity()
        if prune_head:
            self.num_classes = 0
            self.head = nn.Identity()
        self.num_features = self.head_hidden_size = self.dims[last]
        self.out_indices = tuple(take)
        self.feature_norm_indices = tuple(i for i in self.feature_norm_indices if i <= last)
        self.feature_info = self._feature_info()
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final stage map, ``[B, C, H, W]`` (a channels-last view, no copy)."""
        for i in range(len(self.stages)):
            x = self._run_stage(i, x)
        return x.permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x, norm=True, intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoint_filter_fn(self, state: dict[str, Any], source_format: str) -> dict[str, Any]:
        """Official checkpoint -> this model: Paddle layouts converted, filters resized.

        A model without final norm or head (``features_only``, ``num_classes=0``) drops the
        checkpoint's; a dense backbone's feature norms, when the checkpoint has none of them (a
        classification checkpoint), keep their initialisation. The log notes both.
        """
        if source_format == "pdparams":
            from .paddle import convert_paddle_metaformer

            state = convert_paddle_metaformer(state)
        own = self.state_dict()
        state = self._drop_classifier(state)
        norms = [f"norm{i}." for i in self.feature_norm_indices]
        if norms and not any(k.startswith(tuple(norms)) for k in state):
            kept = {k: v for k, v in own.items() if k.startswith(tuple(norms))}
            log.info(
                "the checkpoint has no per-output feature norms (%s): they keep their "
                "initialisation (weight 1, bias 0), as in the official dense-prediction code",
                ", ".join(n[:-1] for n in norms),
            )
            state = {**state, **kept}
        out = {}
        for key, value in state.items():
            if key.endswith("complex_weights") and key in own and value.ndim == 4:
                h, w = own[key].shape[:2]
                if value.shape[:2] != (h, w):
                    if value.shape[2:] != own[key].shape[2:]:
                        raise CheckpointError(
                            f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
                        )
                    value = resize_complex_weight(value.float(), h, w)
            out[key] = value
        return out

    def _drop_classifier(self, state: dict[str, Any]) -> dict[str, Any]:
        """Without a final norm / head, the checkpoint's are not loaded (noted in the log)."""
        prefixes = tuple(
            f"{name}." for name in ("norm", "head") if isinstance(getattr(self, name), nn.Identity)
        )
        dropped = [k for k in state if k.startswith(prefixes)] if prefixes else []
        if not dropped:
            return state
        more = f", ... ({len(dropped) - 8} more)" if len(dropped) > 8 else ""
        log.info(
            "the model has no %s (features_only, num_classes=0 or pruned): not loading %s%s",
            " or ".join({"norm.": "final norm", "head.": "classifier"}[p] for p in prefixes),
            ", ".join(dropped[:8]),
            more,
        )
        skip = set(dropped)
        return {k: v for k, v in state.items() if k not in skip}


# --- registered architectures -------------------------------------------------------------
def _cfg(**kwargs: Any) -> PretrainedCfg:
    return PretrainedCfg(first_conv="downsample_layers.0.conv", classifier=("head",), **kwargs)


S18 = {"depths": (3, 3, 9, 3), "dims": (64, 128, 320, 512)}
S36 = {"depths": (3, 12, 18, 3), "dims": (64, 128, 320, 512)}
M36 = {"depths": (3, 12, 18, 3), "dims": (96, 192, 384, 576)}
B36 = {"depths": (3, 12, 18, 3), "dims": (128, 256, 512, 768)}
TEST = {"depths": (1, 1, 2, 1), "dims": (16, 32, 48, 64), "num_classes": 10, "img_size": 64}

DF = "dynamic_filter"
CDF = ("sepconv", "sepconv", DF, DF)
CA = ("sepconv", "sepconv", "attention", "attention")


def _build(arch: dict[str, Any], token_mixers: str | Sequence[str], **kwargs: Any) -> MetaFormer:
    """Architecture defaults, then the caller's overrides (any MetaFormer argument)."""
    return MetaFormer(**{**arch, "token_mixers": token_mixers, **kwargs})


@register_model(_cfg())
def dfformer_s18(**kwargs: Any) -> MetaFormer:
    return _build(S18, DF, **kwargs)


@register_model(_cfg())
def dfformer_s36(**kwargs: Any) -> MetaFormer:
    return _build(S36, DF, **kwargs)


@register_model(_cfg())
def dfformer_m36(**kwargs: Any) -> MetaFormer:
    return _build(M36, DF, **kwargs)


@register_model(_cfg())
def dfformer_b36(**kwargs: Any) -> MetaFormer:
    return _build(B36, DF, **kwargs)


@register_model(_cfg())
def cdfformer_s18(**kwargs: Any) -> MetaFormer:
    return _build(S18, CDF, **kwargs)


@register_model(_cfg())
def cdfformer_s36(**kwargs: Any) -> MetaFormer:
    return _build(S36, CDF, **kwargs)


@register_model(_cfg())
def cdfformer_m36(**kwargs: Any) -> MetaFormer:
    return _build(M36, CDF, **kwargs)


@register_model(_cfg())
def cdfformer_b36(**kwargs: Any) -> MetaFormer:
    return _build(B36, CDF, **kwargs)


@register_model(_cfg())
def gfformer_s18(**kwargs: Any) -> MetaFormer:
    return _build(S18, "global_filter", **kwargs)


@register_model(_cfg())
def convformer_s18(**kwargs: Any) -> MetaFormer:
    return _build(S18, "sepconv", **kwargs)


@register_model(_cfg())
def convformer_s36(**kwargs: Any) -> MetaFormer:
    return _build(S36, "sepconv", **kwargs)


@register_model(_cfg())
def convformer_m36(**kwargs: Any) -> MetaFormer:
    return _build(M36, "sepconv", **kwargs)


@register_model(_cfg())
def convformer_b36(**kwargs: Any) -> MetaFormer:
    return _build(B36, "sepconv", **kwargs)


@register_model(_cfg())
def caformer_s18(**kwargs: Any) -> MetaFormer:
    return _build(S18, CA, **kwargs)


@register_model(_cfg())
def caformer_s36(**kwargs: Any) -> MetaFormer:
    return _build(S36, CA, **kwargs)


@register_model(_cfg())
def caformer_m36(**kwargs: Any) -> MetaFormer:
    return _build(M36, CA, **kwargs)


@register_model(_cfg())
def caformer_b36(**kwargs: Any) -> MetaFormer:
    return _build(B36, CA, **kwargs)


# Tiny variants for tests and smoke runs: the shapes of the shared reference cases.
@register_model(_cfg(num_classes=10, input_size=(3, 64, 64)))
def test_dfformer(**kwargs: Any) -> MetaFormer:
    return _build(TEST, DF, **kwargs)


@register_model(_cfg(num_classes=10, input_size=(3, 64, 64)))
def test_cdfformer(**kwargs: Any) -> MetaFormer:
    return _build(TEST, CDF, **kwargs)


@register_model(_cfg(num_classes=10, input_size=(3, 64, 64)))
def test_gfformer(**kwargs: Any) -> MetaFormer:
    return _build(TEST, "global_filter", **kwargs)


@register_model(_cfg(num_classes=10, input_size=(3, 64, 64)))
def test_convformer(**kwargs: Any) -> MetaFormer:
    return _build({**TEST, "dims": (16, 32, 64, 64)}, "sepconv", **kwargs)


@register_model(_cfg(num_classes=10, input_size=(3, 64, 64)))
def test_caformer(**kwargs: Any) -> MetaFormer:
    return _build({**TEST, "dims": (16, 32, 64, 64)}, CA, **kwargs)
