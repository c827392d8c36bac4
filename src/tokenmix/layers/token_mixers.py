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

Two paths compute each mixer (see :mod:`tokenmix.layers.reference`): ``forward_reference``
follows the official code line by line; ``forward_fast`` (the default) computes the same
function with fewer passes over memory and faster kernels:

- StarReLU in three in-place passes instead of four new tensors (``activations.star_relu``),
  in inference with the ReLU fused into the preceding linear (``kernels.ops.linear_relu``);
  in the FFT mixers its scale and bias are applied to the spectrum instead
  (``_SpectralMixer._affine_in_spectrum``), which saves one of those passes;
- the linear, fused-ReLU, attention and DFT kernels each layer resolved at construction
  (``tokenmix.kernels``: oneDNN or BLAS per shape and CPU class, plain ops where unproved);
- ``pwconv2`` applied to the filtered spectrum before the inverse transform (both linear, so
  they commute): the inverse FFT runs on ``C`` channels instead of ``2C`` (``_inverse``);
- small maps (14x14, 7x7) transformed by one dense DFT matrix product each way, the filter
  product done in place in inference (``spectral.py``);
- the spectral part laid out channels-first (``[C, B, H, W]``, which the pointwise products
  produce and consume without a transposing copy), so the FFT runs over contiguous memory
  (``spectral.py``, which can also run the transforms as matrix products, for ONNX);
- the per-sample filter built with one real matrix product (no complex ``einsum``, which is
  also what makes the model exportable to ONNX);
- filters resized for a new input size cached while no gradient is needed;
- attention through ``F.scaled_dot_product_attention`` (``kernels.ops.attention``).

The FFT always runs in float32 (autocast is switched off around it): bf16/fp16 FFTs lose the
precision the filters rely on and are not supported on every device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..kernels.ops import linear, mm_nt, mm_nt_relu, records_grad
from .activations import StarReLU, linear_star_relu, relu_square
from .attention import Attention
from .mlp import Mlp
from .reference import DualPath
from .spectral import Spectrum, apply_filter, irfft2, rfft2


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


def _autocast_kind(device: torch.device) -> str:
    return device.type if device.type in ("cuda", "xpu", "mps") else "cpu"


def _autocast_off(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=_autocast_kind(device), enabled=False)


class _SpectralMixer(DualPath):
    """Shared pieces of the FFT mixers: pointwise expansion, rfft2 -> filter -> irfft2 -> project."""

    complex_weights: nn.Parameter

    def __init__(self, dim: int, expansion_ratio: float, bias: bool) -> None:
        super().__init__()
        self.dim = dim
        self.med_channels = int(expansion_ratio * dim)
        self.pwconv1 = nn.Linear(dim, self.med_channels, bias=bias)
        self.act1 = StarReLU()
        self._resized: tuple[Any, torch.Tensor] | None = None
        self.kernels = kernels.choose_linear(min(dim, self.med_channels))

    def _choose_dft(self) -> None:
        self.kernels["dft"] = kernels.choose("dft", points=self.size[0] * self.size[1])

    def filters(self, height: int, width: int) -> torch.Tensor:
        """The stored filters as ``[height, width, K, 2]`` float32, resized if needed.

        A resized bank is cached while it needs no gradient (inference), keyed by the size and
        the weight's identity and version, so a new checkpoint or an optimiser step invalidates it.
        """
        weight = self.complex_weights.float()
        if weight.shape[:2] == (height, width):
            return weight
        cacheable = not (
            (torch.is_grad_enabled() and weight.requires_grad) or torch.compiler.is_compiling()
        )
        if not cacheable:
            return resize_complex_weight(weight, height, width)
        key = (height, width, weight.data_ptr(), weight._version, weight.device)
        if self._resized is None or self._resized[0] != key:
            self._resized = (key, resize_complex_weight(weight, height, width))
        return self._resized[1]

    def _expand(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(pwconv1(x)) ** 2`` for ``x`` = ``[B, H, W, C]``, as float32 ``[C_med, B, H, W]``:
        ``act1`` without its affine part, which :meth:`_affine_in_spectrum` applies later.

        Channels outermost, so the FFT over the last two dimensions reads and writes contiguous
        memory with no transposing copy; the product gets that layout for free by letting the
        activations play the weight (``W x^T`` instead of ``x W^T``).
        """
        b, height, width, c = x.shape
        rows = x.reshape(b * height * width, c)
        weight, bias = self.pwconv1.weight, self.pwconv1.bias
        k = self.kernels
        if bias is None and not records_grad(rows, weight):
            h = mm_nt_relu(weight, rows, k["linear_relu"], k["linear"]).square_()
        else:
            h = mm_nt(weight, rows, k["linear"])
            if bias is not None:  # runs along the rows of the transposed product
                h = h + bias[:, None]
            h = relu_square(h, inplace=True)
        return h.float().view(-1, b, height, width)  # [C_med, B, H, W]

    def _affine_in_spectrum(
        self, spec: Spectrum, filters: torch.Tensor, dc_filters: torch.Tensor, size: tuple[int, int]
    ) -> Spectrum:
        """``rfft2(scale * r + bias) * f`` from ``spec`` = ``rfft2(r)``, where ``scale`` and
        ``bias`` are ``act1``'s, ``filters`` = ``scale * f`` (``[..., H, W // 2 + 1, 2]``) and
        ``dc_filters`` = ``f[..., 0, 0, :]``.

        StarReLU's affine part commutes with the (linear) transform: ``rfft2(s r + b) =
        s rfft2(r) + b sqrt(H W) delta`` (orthonormal: a constant map has only the zero
        frequency). So the scale goes into the filters, where the callers apply it to a small
        tensor (the filter bank or the routing weights), and the bias is added to one frequency,
        instead of a pass over the largest activation of the mixer.
        """
        if not isinstance(self.act1, StarReLU):  # the fold is StarReLU's affine part
            raise TypeError(f"spectral fold needs act1 to be StarReLU, got {type(self.act1)}")
        spec = apply_filter(spec, filters)
        dc = dc_filters * (self.act1.bias.float() * math.sqrt(size[0] * size[1]))  # [..., 2]
        if isinstance(spec, tuple):
            spec[0][..., 0, 0] += dc[..., 0]
            spec[1][..., 0, 0] += dc[..., 1]
        else:  # through the real view: exporters have no complex indexing
            torch.view_as_real(spec)[..., 0, 0, :] += dc
        return spec

    def _spectrum(self, x: torch.Tensor) -> Spectrum:
        """``rfft2`` of the expanded input, ``[C_med, B, H, W // 2 + 1]``.

        The expanded activation lives only inside this call, so it is freed as soon as its
        spectrum exists (the caller never holds it).
        """
        h = self._expand(x)
        with _autocast_off(x.device):
            return rfft2(h, self._dft_kernel(x.shape[1], x.shape[2]))

    def _dft_kernel(self, height: int, width: int) -> str:
        """The layer's DFT choice at its built size; re-resolved for another live size."""
        if (height, width) == self.size:
            return self.kernels["dft"]
        return kernels.choose("dft", points=height * width)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        # one expression, so no frame keeps the (largest) spectrum alive past its last use
        return self._inverse(self._filtered(x), (x.shape[1], x.shape[2]))

    def _filtered(self, x: torch.Tensor) -> Spectrum:
        """The filtered spectrum ``rfft2(act1(pwconv1(x))) * filter``, ``[C_med, B, H, W//2+1]``."""
        raise NotImplementedError

    def _inverse(self, spec: Spectrum, size: tuple[int, int]) -> torch.Tensor:
        """``pwconv2(act2(irfft2(spec)))`` for ``spec`` = ``[C_med, B, H, W // 2 + 1]``, as
        ``[B, H, W, C]``.

        ``act2`` is the identity in DFFormer and GFFormer, and the inverse DFT (per channel)
        and ``pwconv2`` (per position) are both linear, so they commute: projecting the
        spectrum first runs the inverse transform -- the costliest step of the mixer -- on
        ``C`` channels instead of ``C_med = 2C``, and the product reads the spectrum in its own
        layout, with no transposing copy. The result is a permuted view of ``[C, B, H, W]``.
        """
        dft = self._dft_kernel(*size)
        if isinstance(spec, tuple) or not isinstance(self.act2, nn.Identity):
            with _autocast_off(self.pwconv2.weight.device):
                y = irfft2(spec, size, dft)
            return self._project(y)
        c, b, fh, fw = spec.shape
        weight = self.pwconv2.weight
        flat = torch.view_as_real(spec).view(c, -1)  # [C_med, B*fh*fw*2]: (re, im) pairs
        if torch.is_autocast_enabled(_autocast_kind(flat.device)):
            mixed = torch.mm(weight, flat)  # autocast dtype; real weights act on re and im alike
        else:
            mixed = mm_nt(weight, flat.t(), self.kernels["linear"])  # W @ flat
        del spec, flat
        mixed = mixed.float().view(-1, b, fh, fw, 2)
        with _autocast_off(mixed.device):
            y = irfft2(torch.view_as_complex(mixed), size, dft)  # [C, B, H, W]
        out = y.permute(1, 2, 3, 0)
        if self.pwconv2.bias is not None:
            out = out + self.pwconv2.bias.to(out.dtype)
        return out

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        """``pwconv2(act2(y))`` for ``y`` = ``[C_med, B, H, W]``, as ``[B, H, W, C]``."""
        c, b, height, width = y.shape
        rows = self.act2(y).view(c, -1).t()  # [B*H*W, C_med], a transposed view
        out = linear(rows, self.pwconv2.weight, self.pwconv2.bias, self.kernels["linear"])
        return out.view(b, height, width, -1)

    def _reference_filters(self, height: int, width: int) -> torch.Tensor:
        """The official filter lookup: the stored bank, or resized on every call."""
        return torch.view_as_complex(
            resize_complex_weight(self.complex_weights, height, width).contiguous()
        )

    def _spectral_reference(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Official order: float32, rfft2 over (H, W) of channels-last, multiply, irfft2."""
        height, width = x.shape[1], x.shape[2]
        x = x.to(torch.float32)
        x = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
        x = x * weight
        return torch.fft.irfft2(x, s=(height, width), dim=(1, 2), norm="ortho")


class DynamicFilter(_SpectralMixer):
    """DFFormer's dynamic filter token mixer.

    A small MLP on the spatially averaged input gives, per sample, a softmax over
    ``num_filters`` filters for every expanded channel; the sample's filter is that mixture of
    the shared frequency filters. The fast path builds the mixture with one real matrix product
    (the routing weights are real), which equals the official complex
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
        self._choose_dft()
        self.reweight = Mlp(dim, reweight_expansion_ratio, num_filters * self.med_channels)
        self.act2 = nn.Identity()
        self.pwconv2 = nn.Linear(self.med_channels, dim, bias=bias)

    def _routing(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over the filters, per sample and expanded channel: ``[B, F, C_med]``."""
        return self.reweight(x.mean(dim=(1, 2))).view(x.shape[0], self.num_filters, -1)

    def _filtered(self, x: torch.Tensor) -> Spectrum:
        height, width = x.shape[1], x.shape[2]
        routing = self._routing(x).float().softmax(dim=1)  # [B, F, C]
        spec = self._spectrum(x)  # [C, B, H, W // 2 + 1]
        with _autocast_off(x.device):
            bank = self.filters(height, width // 2 + 1)  # [h, w, F, 2]
            scaled = self._mixed_filters(routing * self.act1.scale.float(), bank)
            dc = routing.permute(2, 0, 1) @ bank[0, 0]  # [C, B, 2]: the filters at (0, 0)
            return self._affine_in_spectrum(spec, scaled, dc, (height, width))

    def _mixed_filters(self, routing: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """Each sample's filter ``sum_f routing[b, f, c] * bank[h, w, f]``: ``[C, B, h, w, 2]``.

        ``[C, B, F] @ [F, h*w*2]`` gives real and imaginary parts interleaved, so the result is
        a complex tensor's memory without a copy.
        """
        fh, fw = bank.shape[:2]
        rows = bank.permute(2, 0, 1, 3).reshape(self.num_filters, fh * fw * 2)
        b, _, c = routing.shape
        mixed = torch.mm(routing.permute(2, 0, 1).reshape(c * b, -1), rows)  # [C*B, h*w*2]
        return mixed.view(c, b, fh, fw, 2)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        routeing = self._routing(x).softmax(dim=1)
        x = self.pwconv1(x)
        x = self.act1(x)
        fh, fw = x.shape[1], x.shape[2] // 2 + 1
        complex_weights = self._reference_filters(fh, fw)
        routeing = routeing.to(torch.complex64)
        weight = torch.einsum("bfc,hwf->bhwc", routeing, complex_weights)
        weight = weight.view(batch, fh, fw, self.med_channels)
        x = self._spectral_reference(x, weight)
        x = self.act2(x)
        return self.pwconv2(x)


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
        self._choose_dft()
        self.act2 = nn.Identity()
        self.pwconv2 = nn.Linear(self.med_channels, dim, bias=bias)

    def _filtered(self, x: torch.Tensor) -> Spectrum:
        height, width = x.shape[1], x.shape[2]
        spec = self._spectrum(x)  # [C, B, H, W // 2 + 1]
        with _autocast_off(x.device):
            bank = self.filters(height, width // 2 + 1)  # [h, w, C, 2]
            scaled = (bank * self.act1.scale.float()).permute(2, 0, 1, 3).unsqueeze(1)
            dc = bank[0, 0].unsqueeze(1)  # [C, 1, 2]: the filters at (0, 0)
            return self._affine_in_spectrum(spec, scaled.contiguous(), dc, (height, width))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pwconv1(x)
        x = self.act1(x)
        fh, fw = x.shape[1], x.shape[2] // 2 + 1
        x = self._spectral_reference(x, self._reference_filters(fh, fw))
        x = self.act2(x)
        return self.pwconv2(x)


class SepConv(DualPath):
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
        self.kernels = kernels.choose_linear(min(dim, med))

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        b, height, width, c = x.shape
        k = self.kernels
        x = linear_star_relu(x.reshape(-1, c), self.pwconv1.weight, self.pwconv1.bias, self.act1, k)
        x = self.dwconv(x.view(b, height, width, -1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return linear(self.act2(x), self.pwconv2.weight, self.pwconv2.bias, k["linear"])

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pwconv1(x)
        x = self.act1(x)
        x = x.permute(0, 3, 1, 2)
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)
        x = self.act2(x)
        return self.pwconv2(x)


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
