"""Mixed precision where it pays: ``auto``, and bf16 requests on hardware without bf16 units.

bf16 is faster only where the hardware multiplies in bf16: CUDA GPUs with bf16 support and CPUs
with AVX512-BF16 or AMX. Elsewhere (e.g. AVX2-only CPUs) PyTorch emulates bf16 matrix products
at a small fraction of the float32 speed, so a bf16 request there warns once -- naming the CPU
capability and the slowdown measured on the spot -- and computes in float32 with plain ops.
"""

from __future__ import annotations

import logging
import time
import warnings

import torch

from .capabilities import detect

log = logging.getLogger(__name__)

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
"""Values of ``train.amp`` and ``--amp``/``--dtype``; ``fp32`` is accepted as ``none``."""

_warned: set[str] = set()


def _emulated_slowdown(size: int = 192, repeats: int = 3) -> float:
    """How many times slower a bf16 matrix product runs than float32 here (measured now)."""
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(size, size, dtype=dtype)
        torch.mm(a, a)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, a)
        timings[dtype] = (time.perf_counter() - start) / repeats
    return timings[torch.bfloat16] / max(timings[torch.float32], 1e-9)


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies in bf16 natively (where bf16 autocast is faster)."""
    caps = detect()
    kind = torch.device(device).type
    if kind == "cuda":
        return caps.cuda_bf16
    if kind == "cpu":
        return caps.cpu_native_bf16
    return False


def resolve_amp(request: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for an amp request on ``device``, or None for float32.

    ``auto``: bf16 where :func:`native_bf16`, else float32. ``bf16`` without bf16 units: one
    warning per process, then float32. ``fp16`` needs CUDA (it relies on a gradient scaler).
    """
    request = {"fp32": "none", "float32": "none"}.get(request, request)
    if request not in AMP_CHOICES:
        raise ValueError(f"amp {request!r}: choose from {', '.join(AMP_CHOICES)}")
    device = torch.device(device)
    if request == "none":
        return None
    if request == "fp16":
        if device.type != "cuda":
            raise ValueError(
                "amp fp16 needs CUDA (it relies on a gradient scaler); use bf16 or auto"
            )
        return torch.float16
    if native_bf16(device):
        return torch.bfloat16
    if request == "bf16" and device.type not in _warned:
        _warned.add(device.type)
        caps = detect()
        if device.type == "cpu":
            why = (
                f"this CPU ({caps.cpu_model}, capability {caps.cpu_capability}) has no bf16 units "
                f"(AVX512-BF16/AMX): bf16 matrix products run emulated, "
                f"{_emulated_slowdown():.0f}x slower than float32 here (measured now)"
            )
        else:
            why = f"{device.type} device without bf16 support"
        msg = f"amp bf16 requested, but {why}; computing in float32 instead (amp auto does this silently)"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` for a dtype from :func:`resolve_amp` (disabled for None)."""
    device = torch.device(device)
    kind = device.type if device.type in ("cuda", "xpu", "mps") else "cpu"
    return torch.autocast(kind, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
