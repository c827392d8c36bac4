"""Float32 linear layers on CPU: oneDNN or the BLAS library, whichever is faster for the shape.

PyTorch sends float32 ``F.linear`` on CPU to its BLAS (MKL in the official wheels), and bf16 to
oneDNN. MKL picks its fast AVX-512 kernels only on Intel CPUs; on AMD CPUs it runs a slower code
path. Measured on the project's earlier benchmark machine (AMD EPYC, 2 threads, shapes of the
MetaFormer layers): MKL 140-230 GFLOP/s, oneDNN 400-530 GFLOP/s for the same float32 product.
On an Intel CPU (Xeon, Sapphire Rapids, 2 threads) both reach the peak, and the better one
depends on the shape: oneDNN is 15-20 % faster for thin products (64-256 features in or out, the
first MetaFormer stages), MKL 2-6 % faster once both feature counts are >= 320 (LV-ViT's and
the last stages' layers). So :func:`linear` calls oneDNN (PyTorch ships its float32 linear as
``torch.ops.mkldnn._linear_pointwise``, the op ``torch.compile`` uses for CPU linears) for
float32 CPU inputs outside autocast and compilation, except for wide weights on Intel CPUs,
which stay with ``F.linear``; the oneDNN path has a backward in oneDNN too.

The result is a float32 matrix product either way (different summation order, same rounding
scale); :func:`set_onednn_linear` turns the dispatch off, e.g. to compare.
"""

from __future__ import annotations

import platform
from typing import Any

import torch
import torch.nn.functional as F

_OP = (
    getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if torch.backends.mkldnn.is_available()
    else None
)
_enabled = _OP is not None

# Smallest ``min(out_features, in_features)`` for which MKL beats oneDNN on Intel CPUs (above).
BLAS_MIN_FEATURES = 320


def _intel_cpu() -> bool:
    """Whether this is an Intel CPU, where MKL runs its fast kernels (Linux: /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return "GenuineIntel" in line
    except OSError:
        pass
    return "Intel" in platform.processor()


_BLAS_FAST = torch.backends.mkl.is_available() and _intel_cpu()


def set_onednn_linear(enabled: bool) -> bool:
    """Route float32 CPU linears through oneDNN (``True``, the default where available; wide
    weights on Intel CPUs still take MKL, see the module doc) or always through ``F.linear``.

    Returns the previous setting, so callers can restore it.
    """
    global _enabled
    previous = _enabled
    _enabled = bool(enabled) and _OP is not None
    return previous


def onednn_linear_enabled() -> bool:
    """Whether :func:`linear` currently uses oneDNN for float32 CPU inputs (of the shapes where
    it is the faster library, see the module doc)."""
    return _enabled


def fp32_linear_policy() -> str:
    """Which library :func:`linear` uses for float32 CPU products here, in words (for the
    benchmark files)."""
    if not _enabled:
        return "F.linear (BLAS)"
    if _BLAS_FAST:
        return (
            f"oneDNN; MKL for weights with >= {BLAS_MIN_FEATURES} features in and out (Intel CPU)"
        )
    return "oneDNN"


def onednn_mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """``a @ b_t.T`` through oneDNN whatever the shape (``b_t`` plays the weight: ``[out, in]``).

    Inference only; the benchmark suite measures oneDNN's peak with it.
    """
    return _OP(a, b_t, None, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """``x @ W^T + b`` for 2-D ``x``, with all three products of forward and backward in oneDNN.

    Callers flatten to 2-D outside, so the output is not a view created inside the Function
    and may be modified in place (``relu_square`` does).
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _OP(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_mm(grad, weight.t())
        if ctx.needs_input_grad[1]:
            # oneDNN packs the "weight" operand; packing the one with more features is faster.
            if x.shape[1] >= grad.shape[1]:
                grad_w = onednn_mm(grad.t(), x.t())
            else:
                grad_w = onednn_mm(x.t(), grad.t()).t()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _enabled
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not _blas_preferred(weight)
    )


def _blas_preferred(weight: torch.Tensor) -> bool:
    """Whether MKL beats oneDNN for a float32 product with this weight (module doc)."""
    return _BLAS_FAST and min(weight.shape) >= BLAS_MIN_FEATURES


def records_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records an op on ``tensors``: the test every inference-only shortcut
    (in-place overwrites, fused ops without a backward) must pass first. Checking the input
    alone is not enough: with frozen earlier layers the input needs no gradient while this
    layer's weights do."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN for float32 on CPU (see the module doc).

    Under autocast, on other devices, in other dtypes and while ``torch.compile`` or
    ``torch.export`` trace the model, this is exactly ``F.linear``.
    """
    if not _use_onednn(x, weight):
        return F.linear(x, weight, bias)
    if records_grad(x, weight, bias):
        out = _OneDnnLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
        return out.view(*x.shape[:-1], out.shape[-1])
    return _OP(x, weight, bias, "none", [], "")


def _fusable(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.dtype | None:
    """The dtype a fused oneDNN ``linear + relu`` would run in, or None where it does not apply.

    Inference only (the fused op has no backward), on CPU, outside compilation, in float32 with
    the oneDNN dispatch on (not for wide weights on Intel CPUs, where MKL and a ReLU pass in
    place are 4-10 % faster than the fused op), or in bf16 under CPU autocast (where
    ``F.linear`` would run bf16).
    """
    if (
        _OP is None
        or x.device.type != "cpu"
        or torch.compiler.is_compiling()
        or records_grad(x, weight, bias)
    ):
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if dtype == torch.bfloat16 else None
    if not (_enabled and x.dtype == weight.dtype == torch.float32) or _blas_preferred(weight):
        return None
    return torch.float32


def linear_relu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``relu(F.linear(x, weight, bias))`` for 2-D ``x``; in inference on CPU one oneDNN op.

    oneDNN applies the ReLU to the product's output tile while it is still in cache (a
    "post-op"), which saves a full pass over the output; measured on 2 cores for the first
    MetaFormer stage ([25088, 64] x [64, 256]): 1.8x faster in bf16, ~7% in float32.
    Elsewhere (autograd recording, other devices, compilation, MKL's shapes) it is the two ops,
    the ReLU in place without autograd. The output is a fresh tensor; overwrite it in place only
    when :func:`records_grad` is false.
    """
    dtype = _fusable(x, weight, bias)
    if dtype is None:
        out = linear(x, weight, bias)
        return F.relu(out) if records_grad(x, weight, bias) else out.relu_()
    cast = (lambda t: t) if dtype == torch.float32 else (lambda t: t.to(dtype))
    with torch.autocast("cpu", enabled=False):
        return _OP(cast(x), cast(weight), None if bias is None else cast(bias), "relu", [], "")
