"""The kernels themselves: the only place in tokenmix that calls private torch ops.

Each function takes the ``kernel`` a layer resolved with :func:`~tokenmix.kernels.choose` and
computes the same function as the plain op it replaces. The special kernel runs only where it
is proved and applies: on CPU, in the dtype it was probed in, outside ``torch.compile`` /
``torch.export`` tracing (they lower the plain ops themselves), and, for ops without a
backward or that overwrite their input, only when autograd records nothing
(:func:`records_grad`). Everywhere else the plain op runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .capabilities import detect
from .policy import attention_explicit_max_scores


def records_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records an op on ``tensors``: the test every inference-only shortcut
    (in-place overwrites, fused ops without a backward) must pass first. Checking the input
    alone is not enough: with frozen earlier layers the input needs no gradient while this
    layer's weights do."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _cpu_eager(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def _plain_fp32(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """float32 CPU tensors outside autocast (where oneDNN's float32 kernels apply)."""
    return (
        _cpu_eager(x)
        and not torch.is_autocast_enabled("cpu")
        and all(t is None or t.dtype == torch.float32 for t in (x, *others))
    )


def onednn_mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """``a @ b_t.T`` through oneDNN whatever the shape (``b_t`` plays the weight, ``[out, in]``).

    Inference only; the benchmark suite measures oneDNN's peak with it.
    """
    return torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], "")


def onednn_forward(kernel: str) -> bool:
    """Whether a ``linear`` choice runs its forward product in oneDNN."""
    return kernel in ("onednn", "onednn_fwd")


def linear_grad_products(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    kernel: str,
    need_x: bool = True,
    need_w: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The input and weight gradients of ``x @ weight^T`` for 2-D ``x`` (``grad @ weight`` and
    ``grad^T @ x``): in oneDNN under ``kernel="onednn"``, in ``torch.mm`` (BLAS) under
    ``kernel="onednn_fwd"``. ``benchmarks/kernel_thresholds.py`` times both through here."""
    grad_x = grad_w = None
    if kernel == "onednn_fwd":
        if need_x:
            grad_x = torch.mm(grad, weight)
        if need_w:
            grad_w = torch.mm(grad.t(), x)
        return grad_x, grad_w
    if need_x:
        grad_x = onednn_mm(grad, weight.t())
    if need_w:
        # oneDNN packs the "weight" operand; packing the one with more features is faster.
        if x.shape[1] >= grad.shape[1]:
            grad_w = onednn_mm(grad.t(), x.t())
        else:
            grad_w = onednn_mm(x.t(), grad.t()).t()
    return grad_x, grad_w


class _OneDnnLinear(torch.autograd.Function):
    """``x @ W^T + b`` for 2-D ``x`` in oneDNN; the two backward products in oneDNN too
    (``kernel="onednn"``) or in ``torch.mm`` (``kernel="onednn_fwd"``). On AMD Zen 3 MKL's
    weight gradient measured 1.1-1.9x faster than oneDNN's (which most likely reorders the
    transposed operands first); both products together 0.79-1.10 of oneDNN's time per shape
    (``benchmarks/results/kernel_thresholds-amd-AVX2.md``, which decides per CPU class).

    Callers flatten to 2-D outside, so the output is not a view created inside the Function
    and may be modified in place.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.kernel = kernel
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x, grad_w = linear_grad_products(grad, x, weight, ctx.kernel, need_x, need_w)
        grad_b = grad.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b, None


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, kernel: str = "blas"
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; with ``kernel="onednn"`` float32 CPU inputs go through
    oneDNN's inner product (forward and backward), with ``kernel="onednn_fwd"`` the forward
    through oneDNN and the backward through ``torch.mm``. Under autocast, on other devices, in
    other dtypes and while compiling this is exactly ``F.linear``."""
    if not onednn_forward(kernel) or not _plain_fp32(x, weight, bias):
        return F.linear(x, weight, bias)
    if records_grad(x, weight, bias):
        out = _OneDnnLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias, kernel)
        return out.view(*x.shape[:-1], out.shape[-1])
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def mm_nt(a: torch.Tensor, b: torch.Tensor, kernel: str = "blas") -> torch.Tensor:
    """``a @ b.T`` for 2-D tensors, where ``a`` is a layer's weight and ``b`` its input rows.

    The roles are swapped on purpose (the product's output is then channels-first); written as
    a plain ``mm``, with oneDNN taking ``b`` as its packed operand under a oneDNN ``kernel``.
    """
    if onednn_forward(kernel) and _plain_fp32(a, b):
        return linear(a, b, None, kernel)
    return torch.mm(a, b.t())


def _relu_fusion_dtype(
    x: torch.Tensor, weight: torch.Tensor, linear_kernel: str
) -> torch.dtype | None:
    """The dtype a fused oneDNN ``linear + relu`` runs in here, or None where it does not."""
    if not _cpu_eager(x):
        return None
    if torch.is_autocast_enabled("cpu"):
        native = detect().onednn_bf16_linear
        return (
            torch.bfloat16 if native and torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
        )
    if onednn_forward(linear_kernel) and x.dtype == weight.dtype == torch.float32:
        return torch.float32
    return None


def linear_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    kernel: str = "unfused",
    linear_kernel: str = "blas",
) -> torch.Tensor:
    """``relu(F.linear(x, weight, bias))`` for 2-D ``x``.

    With ``kernel="onednn"``, in CPU inference, one oneDNN op that applies the ReLU to each
    output tile while it is in cache: float32 when the layer's linear kernel is oneDNN, bf16
    under CPU autocast where the CPU has bf16 units. Elsewhere the product and then the ReLU
    (in place when autograd records nothing). The output is a fresh tensor; overwrite it in
    place only when :func:`records_grad` is false.
    """
    dtype = None
    if kernel == "onednn" and not records_grad(x, weight, bias):
        dtype = _relu_fusion_dtype(x, weight, linear_kernel)
    if dtype is None:
        out = linear(x, weight, bias, linear_kernel)
        return F.relu(out) if records_grad(x, weight, bias) else out.relu_()
    cast = (lambda t: t) if dtype == torch.float32 else (lambda t: t.to(dtype))
    with torch.autocast("cpu", enabled=False):
        return torch.ops.mkldnn._linear_pointwise(
            cast(x), cast(weight), None if bias is None else cast(bias), "relu", [], ""
        )


def mm_nt_relu(
    a: torch.Tensor, b: torch.Tensor, kernel: str = "unfused", linear_kernel: str = "blas"
) -> torch.Tensor:
    """``relu(a @ b.T)`` with the roles of :func:`mm_nt` (``a`` the weight), fused like
    :func:`linear_relu` under ``kernel="onednn"``."""
    if kernel == "onednn" and not records_grad(a, b) and _relu_fusion_dtype(b, a, linear_kernel):
        return linear_relu(a, b, None, kernel, linear_kernel)
    out = mm_nt(a, b, linear_kernel)
    return F.relu(out) if records_grad(a, b) else out.relu_()


def conv2d_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    kernel: str = "unfused",
) -> torch.Tensor:
    """``relu(F.conv2d(...))``; with ``kernel="onednn"`` in float32 CPU inference one oneDNN
    op with the ReLU as a post-op (one pass over the full-resolution output fewer)."""
    if kernel == "onednn" and _plain_fp32(x, weight, bias) and not records_grad(x, weight, bias):
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, padding, stride, dilation, groups, "relu", [], ""
        )
    out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return F.relu(out) if records_grad(x, weight, bias) else out.relu_()


def gelu_(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU overwriting ``x`` (inference only: the caller checks :func:`records_grad`)."""
    return torch.ops.aten.gelu_(x, approximate=approximate)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    drop_rate: float = 0.0,
    kernel: str = "sdpa",
) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` of ``[B, heads, N, d]`` tensors (``drop_rate`` 0 in eval).

    ``F.scaled_dot_product_attention`` (fused, memory-efficient), except with
    ``kernel="explicit"`` for bf16/fp16 on CPU and a small score matrix: PyTorch's CPU flash
    kernel runs its products without the CPU's bf16 matrix units, and explicit batched products
    are faster there. Large score matrices keep the fused kernel, which never materialises them.
    """
    scores = q.shape[0] * q.shape[1] * q.shape[-2] * k.shape[-2]
    if (
        kernel == "explicit"
        and _cpu_eager(q)
        and q.dtype in (torch.bfloat16, torch.float16)
        and scores <= attention_explicit_max_scores()
    ):
        attn = torch.matmul(q, k.transpose(-2, -1)).mul_(scale).softmax(dim=-1)
        return torch.matmul(F.dropout(attn, drop_rate), v)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=drop_rate, scale=scale)
