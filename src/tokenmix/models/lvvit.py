"""LV-ViT: the vision transformer trained with Token Labeling.

Jiang et al., "All Tokens Matter: Token Labeling for Training Better Vision Transformers",
NeurIPS 2021. Matches zihangJiang/TokenLabeling@9dbfd59 ``tlt/models/lvvit.py`` and
``tlt/models/layers.py``: a convolutional stem ("4_2": three convs with BatchNorm, then a
``patch_size // 2`` projection; "4_2_128" for LV-ViT-L), pre-norm transformer blocks whose
residual branches are divided by ``skip_lam``, a class head on the class token and a dense
``aux_head`` on every patch token.

State-dict names, shapes and order equal the official ones, so official checkpoints load
strictly; Paddle ``.pdparams`` files are converted by :func:`checkpoint_filter_fn`. Checked by
``tests/test_lvvit.py`` against the official key manifests (every registered size and
resolution) and the numeric cases ``lvvit_tiny`` / ``lvvit_tiny_l`` (eval, train and MixToken
outputs, max abs diff <= 1e-5 in float32) and by ``tests/test_paddle.py`` against the Paddle
port's recorded outputs.

Outputs. ``forward`` returns one tensor, ``head(cls) + 0.5 * max over tokens of
aux_head(tokens)``, as the official eval path. With ``token_labeling = True`` and the model in
training mode, ``forward`` returns ``(cls_logits [B, C], aux_logits [B, N, C], mix_box)``
for :class:`tokenmix.engine.losses.TokenLabelingLoss`; MixToken (a CutMix box on the patch
grid, swapped between sample ``b`` and ``B - 1 - b``) is applied to the patch embeddings and
undone on ``aux_logits``, so dense targets stay aligned with their own image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import kernels
from ..kernels.ops import records_grad
from ..layers import DropPath, DualPath, Mlp
from ..layers.attention import Attention
from ..layers.conv import conv_bn_relu
from ..utils import cut_box, to_2tuple
from .checkpoint import CheckpointError
from .features import FeatureInfo, feature_take_indices
from .pretrained import PretrainedCfg
from .registry import register_model

log = logging.getLogger("tokenmix")

__all__ = [
    "LVViT",
    "MixBox",
    "mix_token_box",
    "mix_tokens",
    "resize_pos_embed",
    "sample_mix_box",
]

# stem name -> channels of its three convolutions (official PatchEmbed4_2 / PatchEmbed4_2_128)
STEM_CHANNELS = {"4_2": 64, "4_2_128": 128}


# --- MixToken -------------------------------------------------------------------------------
class MixBox(NamedTuple):
    """A box on the patch grid: rows ``row0:row1``, columns ``col0:col1``.

    The field order is the official ``(bbx1, bby1, bbx2, bby2)``, whose ``bbx`` indexes rows.
    An empty box (the default ``(0, 0, 0, 0)``) means no mixing.
    """

    row0: int = 0
    col0: int = 0
    row1: int = 0
    col1: int = 0

    @property
    def area(self) -> int:
        return max(self.row1 - self.row0, 0) * max(self.col1 - self.col0, 0)

    def lam(self, num_tokens: int) -> float:
        """Share of tokens that stay the sample's own: the loss's mixing weight."""
        return 1.0 - self.area / num_tokens


def mix_token_box(grid: tuple[int, int], lam: float, centre: tuple[int, int]) -> MixBox:
    """The official ``rand_bbox`` rule: a box of side ``int(side * sqrt(1 - lam))`` at ``centre``.

    The box is clipped to the grid and its half sides are rounded down, so its true area
    usually differs from ``(1 - lam) * N``; the loss therefore uses :meth:`MixBox.lam`.
    """
    return MixBox(*cut_box(grid, lam, centre))


def sample_mix_box(grid: tuple[int, int], generator: torch.Generator | None = None) -> MixBox:
    """Draw a MixToken box: ``lam ~ Beta(1, 1)`` (uniform on [0, 1]), centre uniform on the grid.

    Uses ``generator`` (or torch's global RNG) so that a seeded run repeats its boxes. The draws
    are CPU scalars, so no device synchronisation happens.
    """
    lam = float(torch.rand((), generator=generator))
    r = int(torch.randint(grid[0], (), generator=generator))
    c = int(torch.randint(grid[1], (), generator=generator))
    return mix_token_box(grid, lam, (r, c))


def mix_tokens(tokens: torch.Tensor, box: MixBox, grid: tuple[int, int]) -> torch.Tensor:
    """Swap the patch tokens ``[B, H*W, C]`` inside ``box`` between samples ``b`` and ``B-1-b``.

    The swap is its own inverse: applying it to the per-token outputs returns each token's
    output to the sample whose image it came from.
    """
    if box.area == 0:
        return tokens
    mask = torch.zeros(grid, dtype=torch.bool, device=tokens.device)
    mask[box.row0 : box.row1, box.col0 : box.col1] = True
    return torch.where(mask.reshape(1, -1, 1), tokens.flip(0), tokens)


def resize_pos_embed(
    pos_embed: torch.Tensor,
    grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    src_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize ``[1, prefix + h*w, C]`` position embeddings to ``grid``, prefix (class token) kept.

    Bicubic on the patch grid with ``align_corners=False``, as the official fine-tuning code
    (``tlt/utils/utils.py:resize_pos_embed``). Without ``src_grid`` the stored grid must be
    square, as every official checkpoint's is: a flat token count does not say its shape.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = patches.shape[1]
    if src_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise CheckpointError(
                f"pos_embed has {n} patch positions (+{num_prefix_tokens} class), not a square "
                "grid; cannot tell its shape to resize it"
            )
        src_grid = (side, side)
    if tuple(src_grid) == tuple(grid):
        return pos_embed
    dim = patches.shape[-1]
    patches = patches.reshape(1, src_grid[0], src_grid[1], dim).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
    return torch.cat([prefix, patches.to(pos_embed.dtype)], dim=1)


# --- layers ---------------------------------------------------------------------------------
class ConvStem(DualPath):
    """Patch embedding "4_2": conv 7x7/2 + BN + ReLU, two conv 3x3 + BN + ReLU, then a
    ``patch_size // 2`` strided projection. Output ``[B, embed_dim, H/16, W/16]`` (NCHW).

    ``stem_stride`` (official: 2) is the stride of the first convolution; the projection
    strides by the rest of ``patch_size``. Small inputs use it to keep full-resolution stem
    features: ``patch_size=2, stem_stride=1`` at 32 px gives 16x16 tokens.

    The fast path runs channels-last in inference and folds each BatchNorm into its
    convolution in eval mode, with the ReLU fused in CPU inference
    (``tokenmix.layers.conv.conv_bn_relu``)."""

    def __init__(
        self, in_chans: int, embed_dim: int, patch_size: int, stem_chs: int, stem_stride: int = 2
    ) -> None:
        super().__init__()
        if stem_stride < 1 or patch_size % stem_stride:
            raise ValueError(
                f"patch_size {patch_size} must be a multiple of the stem's first stride "
                f"{stem_stride} (official: 16 and 2)"
            )
        self.conv1 = nn.Conv2d(in_chans, stem_chs, 7, stride=stem_stride, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.conv2 = nn.Conv2d(stem_chs, stem_chs, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem_chs)
        self.conv3 = nn.Conv2d(stem_chs, stem_chs, 3, stride=1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(stem_chs)
        self.act = nn.ReLU(inplace=True)
        step = patch_size // stem_stride
        self.proj = nn.Conv2d(stem_chs, embed_dim, step, stride=step)
        self.patch_size, self.stem_stride = patch_size, stem_stride
        self.kernels = {"conv_relu": kernels.choose("conv_relu"), "stem": kernels.choose("stem")}

    def grid_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Patch grid for an input size (the 7x7 conv rounds up, the projection down)."""
        s, step = self.stem_stride, self.patch_size // self.stem_stride
        return ((img_size[0] - 1) // s + 1) // step, ((img_size[1] - 1) // s + 1) // step

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernels["conv_relu"]
        x = conv_bn_relu(self.conv1, self.bn1, x, kernel)
        x = conv_bn_relu(self.conv2, self.bn2, x, kernel)
        x = conv_bn_relu(self.conv3, self.bn3, x, kernel)
        return self.proj(x)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        if records_grad(x, *self.parameters()):
            return self._layers(x)
        # Inference: channels-last convolutions skip oneDNN's reorders (2x faster, less memory).
        x = x.contiguous(memory_format=torch.channels_last)
        running_stats = not any(bn.training for bn in (self.bn1, self.bn2, self.bn3))
        if not running_stats or self.kernels["stem"] != "chunked" or torch.compiler.is_compiling():
            return self._layers(x)
        # With running statistics every image is independent: run the stem on a few images
        # at a time, so its full-resolution activations (3.2 MB per image at 224) stay small.
        # Freshly allocated tensors of tens of MB are handed back to the OS by glibc and
        # page-faulted in again on the next batch (README, "Page faults and glibc").
        per_image = (
            self.conv1.out_channels * x.shape[-2] * x.shape[-1] // self.stem_stride**2
        ) * x.element_size()
        step = max(1, kernels.policy.stem_chunk_bytes() // max(per_image, 1))
        if x.shape[0] <= step:
            return self._layers(x)
        return torch.cat([self._layers(chunk) for chunk in x.split(step)])

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.act(self.bn3(self.conv3(x)))
        return self.proj(x)


class Block(DualPath):
    """Pre-norm transformer block; each residual branch is divided by ``skip_lam``.

    Dividing the branches keeps the residual stream dominant in deep, wide models (the
    paper's "re-scaling residual connection"); LV-ViT-S/M use 2, LV-ViT-L 3. The fast path
    adds ``branch * (1 / skip_lam)`` in the same pass as the sum (``torch.add(alpha=)``); the
    reference path divides first, as the official code (bit-identical for 1 and 2, within one
    rounding for 3).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 3.0,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        skip_lam: float = 1.0,
    ) -> None:
        super().__init__()
        self.skip_lam = skip_lam
        self.norm1 = nn.LayerNorm(dim)  # eps 1e-5, the nn.LayerNorm default the official uses
        self.attn = Attention(
            dim,
            head_dim=head_dim or dim // num_heads,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            proj_bias=True,
            attn_drop_rate=attn_drop_rate,
            proj_drop_rate=drop_rate,
            qk_scale=qk_scale,
            query_scaled=True,
        )
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio, drop_rate=drop_rate, act_layer=nn.GELU, bias=True)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        alpha = 1.0 / self.skip_lam
        x = torch.add(x, self.drop_path(self.attn(self.norm1(x))), alpha=alpha)
        return torch.add(x, self.drop_path(self.mlp(self.norm2(x))), alpha=alpha)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x))) / self.skip_lam
        return x + self.drop_path(self.mlp(self.norm2(x))) / self.skip_lam


# --- model ----------------------------------------------------------------------------------
class LVViT(nn.Module):
    """LV-ViT (the official ``LV_ViT`` with ``return_dense=True``) with the timm-style interface.

    Args:
        img_size: input size the position embeddings are stored for; other sizes work too
            (the embeddings are resized on the fly, and when a checkpoint is loaded).
        patch_size: total stride of the stem (16).
        stem_stride: stride of the stem's first convolution (2); with ``patch_size`` it sets
            the token grid for small inputs (e.g. 4 and 2, or 2 and 1, at 32 px).
        stem: ``"4_2"`` (64 stem channels) or ``"4_2_128"`` (128, LV-ViT-L).
        skip_lam: divisor of every residual branch.
        head_dim, qk_scale, qkv_bias: attention options of the official code.
        mix_token: apply MixToken in training when ``token_labeling`` is on.
        token_labeling: in training mode, return ``(cls_logits, aux_logits, mix_box)`` instead
            of one tensor. Off by default so that ``forward`` behaves like any classifier.
        features_only: build without norm and heads; ``forward`` returns patch-token maps
            ``[B, C, H/16, W/16]`` of the blocks in ``out_indices`` (default: all). A
            classification checkpoint loads into it (norm and heads dropped, noted in the log).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 16,
        num_heads: int = 6,
        mlp_ratio: float = 3.0,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        stem: str = "4_2",
        skip_lam: float = 1.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        mix_token: bool = True,
        token_labeling: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        if stem not in STEM_CHANNELS:
            raise ValueError(f"stem must be one of {sorted(STEM_CHANNELS)}, got {stem!r}")
        self.img_size = to_2tuple(img_size)
        self.patch_size = patch_size
        self.num_classes = 0 if features_only else num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.mix_token = mix_token
        self.token_labeling = token_labeling
        self.features_only = features_only
        self.out_indices = tuple(feature_take_indices(depth, out_indices)[0])
        self.grad_checkpointing = False
        self.pretrained_cfg = _cfg()

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_embed = ConvStem(
            in_chans, embed_dim, patch_size, STEM_CHANNELS[stem], stem_stride=stem_stride
        )
        self.grid_size = self.patch_embed.grid_size(self.img_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                head_dim=head_dim,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate,
                drop_path_rate=rate,
                skip_lam=skip_lam,
            )
            for rate in rates
        )
        self.feature_info = self._feature_info()
        if features_only:
            self.norm = nn.Identity()
            self.head = nn.Identity()
            self.aux_head = nn.Identity()
        else:
            self.norm = nn.LayerNorm(embed_dim)
            self.head = self._classifier(num_classes)
            self.aux_head = self._classifier(num_classes)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    def _feature_info(self) -> FeatureInfo:
        return FeatureInfo(
            [
                {"num_chs": self.embed_dim, "reduction": self.patch_size, "module": f"blocks.{i}"}
                for i in self.out_indices
            ]
        )

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # --- timm-style interface -------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position embeddings and class token are exempt from weight decay (official)."""
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace both the class head and the dense ``aux_head`` (both predict the classes).

        With 0, ``forward`` returns the normed class token (``num_features``). ``global_pool``
        can only be ``"token"`` (timm's name for class-token pooling), the one LV-ViT has.
        """
        if global_pool not in (None, "token"):
            raise ValueError(f"LV-ViT pools by class token only, got global_pool={global_pool!r}")
        if self.features_only and num_classes:
            raise ValueError("a features_only backbone has no final norm to put a classifier on")
        self.num_classes = num_classes
        self.head = self._classifier(num_classes)
        self.aux_head = self._classifier(num_classes)
        for layer in (self.head, self.aux_head):
            self._init_weights(layer)

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings for a patch grid; resized (bicubic) when it is not the stored one."""
        if tuple(grid) == self.grid_size:
            return self.pos_embed
        return resize_pos_embed(self.pos_embed, grid, self.num_prefix_tokens, self.grid_size)

    def patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Stem output as tokens ``[B, N, C]`` (row-major over the grid) and the grid size."""
        x = self.patch_embed(x)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid

    def _embed(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Class token prepended, position embeddings added."""
        x = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
        return self.pos_drop(x + self.pos_embed_for(grid))

    def _blocks(
        self, x: torch.Tensor, indices: set[int] | None = None, stop: int | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run blocks ``0..stop-1``; collect the outputs of ``indices``."""
        collected = []
        stop = len(self.blocks) if stop is None else stop
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for i in range(stop):
            block = self.blocks[i]
            x = checkpoint(block, x, use_reentrant=False) if use_ckpt else block(x)
            if indices is not None and i in indices:
                collected.append(x)
        return x, collected

    def forward_tokens(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patch tokens -> class token prepended, positions added, blocks, final norm."""
        x, _ = self._blocks(self._embed(patches, grid))
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, ``[B, 1 + N, C]`` (class token first)."""
        return self.forward_tokens(*self.patchify(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``head(cls) + 0.5 * max over tokens of aux_head(tokens)`` (per sample, as official)."""
        if pre_logits or self.num_classes == 0:
            return x[:, 0]
        return self.head(x[:, 0]) + 0.5 * self.aux_head(x[:, 1:]).amax(dim=1)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location class scores ``[B, num_classes, H/16, W/16]`` from ``aux_head``.

        What a teacher produces for token labels (``tokenmix relabel``).
        """
        patches, grid = self.patchify(x)
        tokens = self.forward_tokens(patches, grid)
        dense = self.aux_head(tokens[:, 1:])
        return dense.transpose(1, 2).reshape(dense.shape[0], -1, *grid)

    def forward_train(
        self,
        x: torch.Tensor,
        mix_box: MixBox | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, MixBox]:
        """Token-labeling outputs: class logits, per-token logits ``[B, N, C]``, MixToken box.

        Args:
            x: images ``[B, 3, H, W]``.
            mix_box: use this box (e.g. to reproduce a recorded case); by default a box is drawn
                when ``mix_token`` is on and the model is training, else none is used.
            generator: RNG for the box draw, for reproducible runs.
        """
        patches, grid = self.patchify(x)
        if mix_box is None:
            mix_box = (
                sample_mix_box(grid, generator) if self.mix_token and self.training else MixBox()
            )
        tokens = self.forward_tokens(mix_tokens(patches, mix_box, grid), grid)
        cls_logits = self.head(tokens[:, 0])
        aux_logits = mix_tokens(self.aux_head(tokens[:, 1:]), mix_box, grid)
        return cls_logits, aux_logits, mix_box

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Patch tokens after the chosen blocks, timm's signature (as its VisionTransformer).

        Args:
            indices: blocks to return: ``None`` (``out_indices``), an int ``n`` (the last ``n``)
                or a list (negative numbers count from the end).
            norm: apply the final norm to each output (a ``features_only`` model has none).
            stop_early: do not run the blocks after the last one asked for; the returned final
                tokens are then that block's, normed.
            output_fmt: ``"NCHW"`` (``[B, C, H/16, W/16]``), ``"NHWC"`` or ``"NLC"`` (tokens
                ``[B, H/16 * W/16, C]``); the class token is never included.
            intermediates_only: return only the list (later blocks are never run).

        Returns:
            ``(final normed tokens [B, 1 + N, C], maps)``, or ``maps`` with
            ``intermediates_only``.
        """
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices, self.out_indices)
        patches, grid = self.patchify(x)
        stop = last + 1 if stop_early or intermediates_only else None
        h, collected = self._blocks(self._embed(patches, grid), set(take), stop)
        b = x.shape[0]
        feats = [(self.norm(t) if norm else t)[:, self.num_prefix_tokens :] for t in collected]
        if output_fmt != "NLC":
            feats = [t.reshape(b, *grid, -1) for t in feats]
        if output_fmt == "NCHW":
            feats = [t.permute(0, 3, 1, 2) for t in feats]
        if intermediates_only:
            return feats
        return self.norm(h), feats

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (timm's signature); returns the indices.

        ``out_indices`` and ``feature_info`` become ``indices``; ``prune_head`` removes both
        classifiers (``num_classes`` 0), ``prune_norm`` the final norm.
        """
        take, last = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        self.out_indices = tuple(take)
        self.feature_info = self._feature_info()
        return take

    def forward(
        self,
        x: torch.Tensor,
        mix_box: MixBox | None = None,
        generator: torch.Generator | None = None,
    ) -> Any:
        """One tensor of logits; see :meth:`forward_train` for the token-labeling outputs."""
        if self.features_only:
            return self.forward_intermediates(x, intermediates_only=True)
        if self.token_labeling and self.training:
            return self.forward_train(x, mix_box, generator)
        return self.forward_head(self.forward_features(x))

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoint_filter_fn(self, state: dict[str, Any], source_format: str) -> dict[str, Any]:
        """Official (or Paddle) checkpoint -> this model: layouts converted, pos_embed resized.

        A ``features_only`` backbone drops the final norm and both heads, noted in the log.
        """
        if source_format == "pdparams":
            from .paddle import convert_paddle_lvvit

            state = convert_paddle_lvvit(state)
        out = {}
        dropped = []
        for key, value in state.items():
            if self.features_only and key.split(".")[0] in ("norm", "head", "aux_head"):
                dropped.append(key)
                continue
            if key == "pos_embed" and value.shape != self.pos_embed.shape:
                value = resize_pos_embed(value, self.grid_size, self.num_prefix_tokens)
            out[key] = value
        if dropped:
            log.info(
                "a features_only backbone has no final norm or heads: not loading %s",
                ", ".join(dropped),
            )
        return out


# --- registered architectures ---------------------------------------------------------------
def _cfg(**kwargs: Any) -> PretrainedCfg:
    kwargs.setdefault("crop_pct", 0.9)
    return PretrainedCfg(
        first_conv="patch_embed.conv1",
        classifier=("head", "aux_head"),
        paper="Jiang et al., All Tokens Matter: Token Labeling for Training Better Vision "
        "Transformers, NeurIPS 2021",
        source="https://github.com/zihangJiang/TokenLabeling",
        **kwargs,
    )


T = {"embed_dim": 240, "depth": 12, "num_heads": 4, "skip_lam": 1.0}
S = {"embed_dim": 384, "depth": 16, "num_heads": 6, "skip_lam": 2.0}
M = {"embed_dim": 512, "depth": 20, "num_heads": 8, "skip_lam": 2.0}
# The official lvvit_l passes order=['tr'] * 24, i.e. 24 plain blocks: depth 24 here.
L = {"embed_dim": 768, "depth": 24, "num_heads": 12, "skip_lam": 3.0, "stem": "4_2_128"}
TEST = {"embed_dim": 48, "depth": 2, "num_heads": 2, "skip_lam": 2.0, "num_classes": 10}


def _build(arch: dict[str, Any], **kwargs: Any) -> LVViT:
    """Architecture defaults, then the caller's overrides (any LVViT argument)."""
    return LVViT(**{**arch, **kwargs})


@register_model(_cfg(crop_pct=0.9))
def lvvit_t(**kwargs: Any) -> LVViT:
    return _build(T, **kwargs)


@register_model(_cfg(crop_pct=0.9))
def lvvit_s(**kwargs: Any) -> LVViT:
    return _build(S, **kwargs)


@register_model(_cfg(crop_pct=1.0))
def lvvit_m(**kwargs: Any) -> LVViT:
    return _build(M, **kwargs)


@register_model(_cfg(crop_pct=1.0))
def lvvit_l(**kwargs: Any) -> LVViT:
    return _build(L, **kwargs)


# Tiny variant for tests and smoke runs: the shape of the shared reference case lvvit_tiny.
@register_model(_cfg(num_classes=10, input_size=(3, 64, 64)))
def test_lvvit(**kwargs: Any) -> LVViT:
    return _build({**TEST, "img_size": 64}, **kwargs)
