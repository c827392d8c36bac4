"""Multiply-accumulate counts that include the FFTs.

The official counters (fvcore, ptflops) skip ``rfft2``/``irfft2`` and complex products, so they
under-count the FFT mixers. We count with ``torch.utils.flop_counter.FlopCounterMode`` (matrix
products, convolutions, attention) and add analytic formulas:

- a complex FFT of ``n`` points costs ``5 n log2 n`` real flops (the radix-2 count); a real-input
  2-D FFT (``rfft2``) or its inverse (``irfft2``) costs half of the complex 2-D FFT of the same
  ``H x W`` grid: ``2.5 * H*W * log2(H*W)`` flops per channel;
- an element-wise complex product costs 6 real flops (4 multiplies, 2 adds).

One MAC = 2 flops, as in the papers' GMACs tables. Element-wise real ops (norms, activations)
are not counted, as in the official tables.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..layers.reference import reference_mode

aten = torch.ops.aten


def _numel(shape: Any) -> int:
    return math.prod(int(s) for s in shape)


def _fft_flops(signal_shape: Any, dims: Any) -> int:
    points = _numel(signal_shape[d] for d in dims)
    batch = _numel(signal_shape) // max(points, 1)
    return int(batch * 2.5 * points * math.log2(max(points, 2)))


def _r2c(x: torch.Tensor, dim: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    return _fft_flops(x.shape, dim)


def _c2r(
    x: torch.Tensor,
    dim: Any,
    normalization: Any,
    last_dim_size: int,
    *args: Any,
    out_val: Any = None,
    **kwargs: Any,
) -> int:
    return _fft_flops(out_val.shape, dim)


def _mul(a: Any, b: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    if isinstance(out_val, torch.Tensor) and out_val.is_complex():
        return 6 * out_val.numel()
    return 0


def _sdpa_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *args: Any,
    out_val: Any = None,
    **kwargs: Any,
) -> int:
    b, h, s_q, d = q.shape
    s_k = k.shape[-2]
    return 2 * b * h * s_q * s_k * (d + v.shape[-1])


for _fn in (_r2c, _c2r, _mul, _sdpa_cpu):
    _fn._get_raw = True  # type: ignore[attr-defined]

# FlopCounterMode looks formulas up by op *packet* (``aten.mul``), not by overload
# (``aten.mul.Tensor``): keyed by overload, a formula is silently never used.
_CUSTOM = {
    aten._fft_r2c: _r2c,
    aten._fft_c2r: _c2r,
    aten.mul: _mul,
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
}


def count_macs(
    model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), batch: int = 1
) -> int:
    """MACs of one forward pass per image, FFTs included.

    Runs the model on the meta device when its parameters are there (no memory, no compute),
    otherwise on a zero tensor of the model's device.
    """
    param = next(model.parameters())
    x = torch.zeros((batch, *input_size), device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    was_training = model.training
    model.eval()
    # The count is of the official computation (the reference path): the fast path's
    # reorderings (the projection moved before the inverse FFT, dense DFTs for small maps) are
    # implementation choices and must not change a model's GMACs. The reference path runs
    # plain aten ops only, which the counter knows.
    try:
        with counter, torch.no_grad(), reference_mode(model):
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2 // batch
