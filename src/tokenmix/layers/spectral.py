"""The global filter of the FFT mixers: ``irfft2(rfft2(x) * filter)``, two ways.

- FFT (default): ``torch.fft`` in float32; exported to ONNX as ``DFT`` nodes.
- Matrix products (:func:`dft_as_matmul`): the same 2-D real DFT written as products with
  cosine/sine matrices and real arithmetic. The feature maps are small (7 to 56 points a side
  at 224), so the O(n^2) products cost little, and they run fast everywhere, whereas
  onnxruntime's CPU ``DFT`` kernel is an order of magnitude slower than PyTorch's FFT at these
  non-power-of-two sizes (README, Export).
  ``tokenmix export --fft matmul`` uses it.

Both compute the ``norm="ortho"`` transforms, and the inverse follows ``irfft2``: an inverse
complex DFT over H, then a complex-to-real DFT over W that ignores the imaginary parts of the
zero and Nyquist columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch

from ..kernels import choose
from ..kernels.ops import records_grad

_matmul = False


@contextmanager
def dft_as_matmul(enabled: bool = True) -> Iterator[None]:
    """Compute the spectral filters with matrix products instead of FFTs while active."""
    global _matmul
    previous, _matmul = _matmul, enabled
    try:
        yield
    finally:
        _matmul = previous


Spectrum = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""A half spectrum: complex ``[..., H, W // 2 + 1]`` (FFT), or its (real, imaginary) parts."""


def _use_dense(kernel: str) -> bool:
    return kernel == "dense" and not torch.compiler.is_compiling()


def rfft2(x: torch.Tensor, kernel: str = "fft") -> Spectrum:
    """Orthonormal 2-D real DFT of float32 ``[..., H, W]`` over the last two dimensions.

    ``kernel``: ``fft`` (``torch.fft``) or ``dense`` (one DFT-matrix product, for small maps;
    the ``dft`` choice of ``tokenmix.kernels``, resolved from the map's number of points).
    """
    if _matmul:
        return _rfft2_matmul(x)
    height, width = x.shape[-2:]
    if _use_dense(kernel):
        forward, _ = _dense_matrices(height, width, x.device)
        spec = x.reshape(-1, height * width) @ forward  # [N, H * (W//2+1) * 2], (re, im) pairs
        return torch.view_as_complex(spec.view(*x.shape[:-2], height, width // 2 + 1, 2))
    return torch.fft.rfft2(x, norm="ortho")


def apply_filter(spec: Spectrum, filters: torch.Tensor) -> Spectrum:
    """``spec * filters`` with ``filters`` = ``[..., H, W // 2 + 1, 2]`` (real, imaginary).

    In inference the product overwrites ``spec``: one spectrum-sized buffer fewer at the peak of
    the FFT mixers (their largest tensors). With autograd recording, a new tensor, since the
    backward needs the original spectrum.
    """
    if isinstance(spec, tuple):
        re, im = spec
        f_re, f_im = filters[..., 0], filters[..., 1]
        return re * f_re - im * f_im, re * f_im + im * f_re
    weight = torch.view_as_complex(filters)
    fits = torch.broadcast_shapes(spec.shape, weight.shape) == spec.shape
    if records_grad(spec, weight) or not fits or torch.compiler.is_compiling():
        return spec * weight
    return spec.mul_(weight)


def irfft2(spec: Spectrum, size: tuple[int, int], kernel: str = "fft") -> torch.Tensor:
    """Inverse of :func:`rfft2` back to a real ``[..., H, W]`` grid of ``size``."""
    if isinstance(spec, tuple):
        return _irfft2_matmul(spec, size)
    height, width = size
    if _use_dense(kernel):
        _, inverse = _dense_matrices(height, width, spec.device)
        rows = torch.view_as_real(spec).reshape(-1, inverse.shape[0])
        return (rows @ inverse).view(*spec.shape[:-2], height, width)
    return torch.fft.irfft2(spec, s=size, norm="ortho")


def spectral_filter(
    x: torch.Tensor, filters: torch.Tensor, size: tuple[int, int], kernel: str | None = None
) -> torch.Tensor:
    """``irfft2(rfft2(x, ortho) * filters, s=size, ortho)`` over the last two dimensions.

    Args:
        x: real ``[..., H, W]`` (float32).
        filters: ``[..., H, W // 2 + 1, 2]`` real and imaginary parts, broadcastable to the
            spectrum.
        size: ``(H, W)``.
        kernel: ``fft`` or ``dense``; default: the machine's choice for ``H * W`` points.
    """
    kernel = kernel or choose("dft", points=size[0] * size[1])
    return irfft2(apply_filter(rfft2(x, kernel), filters), size, kernel)


@lru_cache(maxsize=64)
def _dft_arrays(height: int, width: int) -> tuple[np.ndarray, ...]:
    """Cosine/sine matrices of the orthonormal 2-D real DFT and its inverse, float64.

    Cached as numpy arrays, not tensors: a tensor made while ``torch.export`` traces is a fake
    one and must not outlive the trace.
    """
    half = width // 2 + 1
    angle_w = 2 * np.pi * np.outer(np.arange(width), np.arange(half)) / width  # [W, half]
    fwd_re = np.cos(angle_w) / np.sqrt(width)  # x @ fwd_re: real part of the DFT over W
    fwd_im = -np.sin(angle_w) / np.sqrt(width)
    # complex-to-real over W: bins other than 0 and W/2 stand for a conjugate pair (weight 2);
    # the imaginary parts of bins 0 and W/2 are ignored, as in irfft.
    weight = np.full((half, 1), 2.0)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    inv_re = weight * np.cos(angle_w.T) / np.sqrt(width)  # [half, W]
    inv_im = -weight * np.sin(angle_w.T) / np.sqrt(width)
    inv_im[0] = 0.0
    if width % 2 == 0:
        inv_im[-1] = 0.0
    angle_h = 2 * np.pi * np.outer(np.arange(height), np.arange(height)) / height  # symmetric
    cos_h = np.cos(angle_h) / np.sqrt(height)
    sin_h = np.sin(angle_h) / np.sqrt(height)
    return fwd_re, fwd_im, inv_re, inv_im, cos_h, sin_h


@lru_cache(maxsize=32)
def _dense_matrices(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The whole orthonormal 2-D real DFT of an ``H x W`` map as one matrix, and its inverse.

    Forward ``[H*W, H*(W//2+1)*2]`` maps a flattened map to its half spectrum with real and
    imaginary parts interleaved, i.e. the memory of a complex tensor; inverse
    ``[H*(W//2+1)*2, H*W]`` is ``irfft2`` (imaginary parts of the self-conjugate bins ignored).
    Built in float64 by transforming the identity, stored as float32.

    Why: the FFT mixers run thousands of tiny 2-D transforms (C_med x batch maps of 14x14 or
    7x7), where batched FFT libraries spend their time on per-transform overhead and the
    layout copies of the 2-D c2r, while these products are large, dense GEMMs
    (``benchmarks/kernel_thresholds.py`` measures the crossover per CPU class). Their cost grows with the square of the map size, so larger maps
    keep the FFT (the ``dense_dft_max_points`` threshold of the kernels table). Not used while compiling or exporting (complex views), where the FFT is traced.
    """
    half = width // 2 + 1
    eye = torch.eye(height * width, dtype=torch.float64).view(-1, height, width)
    forward = torch.view_as_real(torch.fft.rfft2(eye, norm="ortho")).reshape(height * width, -1)
    basis = torch.eye(height * half * 2, dtype=torch.float64).view(-1, height, half, 2)
    inverse = torch.fft.irfft2(torch.view_as_complex(basis), s=(height, width), norm="ortho")
    return (
        forward.to(device=device, dtype=torch.float32).contiguous(),
        inverse.reshape(height * half * 2, height * width).to(device=device, dtype=torch.float32),
    )


def _matrices(x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.as_tensor(m, dtype=x.dtype, device=x.device) for m in _dft_arrays(height, width)
    )


def _rfft2_matmul(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fwd_re, fwd_im, _, _, cos_h, sin_h = _matrices(x, x.shape[-2], x.shape[-1])
    # over W (real -> half spectrum), then over H (complex, e^{-i}): (C - iS)(a + ib)
    a, b = x @ fwd_re, x @ fwd_im
    return cos_h @ a + sin_h @ b, cos_h @ b - sin_h @ a


def _irfft2_matmul(spec: tuple[torch.Tensor, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    re, im = spec
    _, _, inv_re, inv_im, cos_h, sin_h = _matrices(re, *size)
    # over H (e^{+i}): (C + iS)(re + i im), then complex-to-real over W
    a = cos_h @ re - sin_h @ im
    b = cos_h @ im + sin_h @ re
    return a @ inv_re + b @ inv_im
