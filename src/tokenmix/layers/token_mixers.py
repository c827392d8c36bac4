"""Token mixers of the MetaFormer family, behind one constructor signature.

Every mixer takes channels-last input ``[B, H, W, C]`` and is built as
``mixer(dim, size=(h, w), **options)``, where ``size`` is the feature-map size the model was
built for (the FFT mixers store their filters on that grid).

- :class:`DynamicFilter` — DFFormer (Tatsunami & Taki, "FFT-based Dynamic Token Mixer for
  Vision", AAAI 2024; okojoalg/dfformer ``models/dfformer.py``): a per-sample, per-channel
  softmax mixture of ``num_filters`` learned global frequency filters.
- :class:`GlobalFilter` — GFNet-style static frequency filter per channel (GFFormer).
- :class:`SepConv` — inverted separable conv of ConvFormer (sail-sg/metaformer).
- :class:`Attention` — multi-head self-attention of CAFormer (sail-sg/metaformer).

Filters are resized bicubically (``align_corners=True``, real and imaginary parts as separate
channels, as the official ``resize_complex_weight``) whenever the live FFT grid differs from the
stored one; at the stored size no resize happens, so the result is bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .activations import StarReLU
from .mlp import Mlp


def resize_complex_weight(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a ``[H, W, K, 2]`` filter bank to ``[height, width, K, 2]``.

    Real and imaginary parts are treated as ``2K`` independent channels and resized bicubically
    with ``align_corners=True``, which is what the official DFFormer code does for
    ``weight_resize=True`` and when loading checkpoints at another resolution.
    """
    h, w, k, two = weight.shape
    if (h, w) == (height, width):
        return weight
    grid = weight.reshape(1, h, w, k * two).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=True)
    return grid.permute(0, 2, 3, 1).reshape(height, width, k, two)


def _filter_grid(size: tuple[int, int]) -> tuple[int, int]:
    """The rfft2 grid of a ``size`` feature map: (H, W // 2 + 1)."""
    return size[0], size[1] // 2 + 1


class _SpectralMixer(nn.Module):
    """Shared pieces of the FFT mixers: pointwise expansion, rfft2 -> filter -> irfft2 -> project.

    The FFT always runs in float32 (autocast is switched off around it), because bf16/fp16 FFTs
    lose the precision the filters rely on and are not supported on every device.
    """

    complex_weights: nn.Parameter

    def __init__(self, dim: int, expansion_ratio: float, bias: bool) -> None:
        super().__init__()
        self.dim = dim
        self.med_channels = int(expansion_ratio * dim)
        self.pwconv1 = nn.Linear(dim, self.med_channels, bias=bias)
        self.act1 = StarReLU()

    def filters(self, height: int, width: int) -> torch.Tensor:
        """The stored filters as ``[height, width, K, 2]`` float32, resized if needed."""
        return resize_complex_weight(self.complex_weights.float(), height, width)

    def spectral(
        self, x: torch.Tensor, apply_filter: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        height, width = x.shape[1], x.shape[2]
        device = x.device.type if x.device.type in ("cuda", "xpu", "mps") else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            x = torch.fft.rfft2(x.float(), dim=(1, 2), norm="ortho")
            x = apply_filter(x)
            return torch.fft.irfft2(x, s=(height, width), dim=(1, 2), norm="ortho")


class DynamicFilter(_SpectralMixer):
    """DFFormer's dynamic filter token mixer.

    A small MLP on the spatially averaged input gives, per sample, a softmax over
    ``num_filters`` filters for every expanded channel; the sample's filter is that mixture of
    the shared frequency filters. The mixture is built with one real matrix product for the real
    and imaginary parts (the routing weights are real), which equals the official complex
    ``einsum('bfc,hwf->bhwc')`` and also exports to ONNX.
    """

    def __init__(
        self,
        dim: int,
        size: tuple[int, int] = (14, 14),
        expansion_ratio: float = 2.0,
        reweight_expansion_ratio: float = 0.25,
        num_filters: int = 4,
        bias: bool = False,
    ) -> None:
        super().__init__(dim, expansion_ratio, bias)
        self.num_filters = num_filters
        self.size = tuple(size)
        h, w = _filter_grid(self.size)
        self.complex_weights = nn.Parameter(torch.randn(h, w, num_filters, 2) * 0.02)
        self.reweight = Mlp(dim, reweight_expansion_ratio, num_filters * self.med_channels)
        self.act2 = nn.Identity()
        self.pwconv2 = nn.Linear(self.med_channels, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        routing = self.reweight(x.mean(dim=(1, 2))).view(batch, self.num_filters, -1)
        routing = routing.float().softmax(dim=1)  # [B, F, C]
        x = self.act1(self.pwconv1(x))

        def apply_filter(spec: torch.Tensor) -> torch.Tensor:
            h, w = spec.shape[1], spec.shape[2]
            bank = self.filters(h, w)  # [h, w, F, 2]
            # [h*w*2, F] @ [B, F, C] -> [B, h*w*2, C]: real and imaginary parts in one product.
            bank = bank.permute(0, 1, 3, 2).reshape(h * w * 2, self.num_filters)
            mixed = torch.matmul(bank, routing).view(batch, h, w, 2, -1)
            return spec * torch.complex(mixed[:, :, :, 0], mixed[:, :, :, 1])

        x = self.spectral(x, apply_filter)
        return self.pwconv2(self.act2(x))


class GlobalFilter(_SpectralMixer):
    """GFNet's global filter inside the MetaFormer block (GFFormer): one filter per channel."""

    def __init__(
        self,
        dim: int,
        size: tuple[int, int] = (14, 14),
        expansion_ratio: float = 2.0,
        bias: bool = False,
    ) -> None:
        super().__init__(dim, expansion_ratio, bias)
        self.size = tuple(size)
        h, w = _filter_grid(self.size)
        self.complex_weights = nn.Parameter(torch.randn(h, w, self.med_channels, 2) * 0.02)
        self.act2 = nn.Identity()
        self.pwconv2 = nn.Linear(self.med_channels, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.pwconv1(x))

        def apply_filter(spec: torch.Tensor) -> torch.Tensor:
            bank = self.filters(spec.shape[1], spec.shape[2])
            return spec * torch.view_as_complex(bank.contiguous())

        x = self.spectral(x, apply_filter)
        return self.pwconv2(self.act2(x))


class SepConv(nn.Module):
    """Inverted separable convolution (MobileNetV2 style) of ConvFormer: pw -> dw 7x7 -> pw."""

    def __init__(
        self,
        dim: int,
        size: tuple[int, int] | None = None,
        expansion_ratio: float = 2.0,
        kernel_size: int = 7,
        bias: bool = False,
    ) -> None:
        super().__init__()
        med = int(expansion_ratio * dim)
        self.pwconv1 = nn.Linear(dim, med, bias=bias)
        self.act1 = StarReLU()
        self.dwconv = nn.Conv2d(
            med, med, kernel_size, padding=kernel_size // 2, groups=med, bias=bias
        )
        self.act2 = nn.Identity()
        self.pwconv2 = nn.Linear(med, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.pwconv1(x))
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.pwconv2(self.act2(x))


class Attention(nn.Module):
    """Multi-head self-attention over all ``H*W`` tokens (CAFormer), head_dim 32, no biases.

    Uses ``F.scaled_dot_product_attention`` (the fused kernel) with the default scale
    ``head_dim ** -0.5``, the same function as the official explicit softmax(QK^T)V.
    """

    def __init__(
        self,
        dim: int,
        size: tuple[int, int] | None = None,
        head_dim: int = 32,
        num_heads: int | None = None,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = num_heads or max(dim // head_dim, 1)
        inner = self.num_heads * head_dim
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.attn_drop_rate = attn_drop_rate
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop_rate if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        x = x.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj_drop(self.proj(x))


TOKEN_MIXERS: dict[str, type[nn.Module]] = {
    "dynamic_filter": DynamicFilter,
    "global_filter": GlobalFilter,
    "sepconv": SepConv,
    "attention": Attention,
}


def create_token_mixer(name: str, dim: int, size: tuple[int, int], **options: Any) -> nn.Module:
    """Build a registered token mixer by name; an unknown name lists the known ones."""
    try:
        cls = TOKEN_MIXERS[name]
    except KeyError:
        raise ValueError(
            f"unknown token mixer {name!r}; known: {', '.join(sorted(TOKEN_MIXERS))}"
        ) from None
    return cls(dim, size=size, **options)
