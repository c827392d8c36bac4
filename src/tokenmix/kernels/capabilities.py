"""What this machine can run, detected once with public torch APIs and proved by running.

A kernel counts as available only when a tiny call of it succeeds here: oneDNN's fused ops
exist in every CPU wheel but fail at primitive creation on CPUs without the ISA they need
(bf16 on AVX2-only CPUs: "could not create a primitive descriptor"). Anything that cannot be
proved is reported unavailable, and the layers then run plain ``F.*`` ops.

Emulate an AVX2-only CPU on a newer one with ``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2`` (both read at process start): detection, probes and the failing bf16
primitive then behave as on such a machine.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Capabilities:
    """The facts every kernel choice is made from (``tokenmix info`` prints them)."""

    cpu_model: str
    cpu_vendor: str  # "intel", "amd" or "other": MKL runs its fast kernels on Intel CPUs only
    cpu_capability: str  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    cpu_native_bf16: bool  # bf16 dot-product units (AVX512-BF16 or AMX) that oneDNN uses
    cpu_amx: bool
    mkl: bool
    mkldnn: bool
    onednn_fp32_linear: bool  # the probes below ran here
    onednn_bf16_linear: bool
    onednn_fp32_conv: bool
    cuda: bool
    cuda_bf16: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def cpu_class(self) -> str:
        """The key of the thresholds table: vendor and capability (``intel-AVX512``)."""
        return f"{self.cpu_vendor}-{self.cpu_capability}"


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU model name (/proc/cpuinfo on Linux; platform.processor() is empty there)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def _cpu_vendor() -> str:
    text = f"{_cpuinfo_field('vendor_id') or ''} {platform.processor()}"
    if "Intel" in text:
        return "intel"
    if "AMD" in text:
        return "amd"
    return "other"


def _probe(fn: Any) -> bool:
    try:
        fn()
        return True
    except Exception:  # any failure means: not proved to work here
        return False


def _onednn_linear(dtype: torch.dtype) -> None:
    x = torch.ones(4, 8, dtype=dtype)
    w = torch.ones(16, 8, dtype=dtype)
    out = torch.ops.mkldnn._linear_pointwise(x, w, None, "relu", [], "")
    if out.shape != (4, 16) or float(out[0, 0]) != 8.0:
        raise RuntimeError("wrong result")


def _onednn_conv() -> None:
    x = torch.ones(1, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    w = torch.ones(4, 3, 3, 3)
    out = torch.ops.mkldnn._convolution_pointwise(
        x, w, None, [1, 1], [1, 1], [1, 1], 1, "relu", [], ""
    )
    if out.shape != (1, 4, 8, 8) or float(out[0, 0, 4, 4]) != 27.0:
        raise RuntimeError("wrong result")


def _native_bf16(capability: str) -> bool:
    """bf16 dot-product units: AVX512-BF16 or AMX, usable by oneDNN under its ISA cap."""
    if not capability.startswith("AVX512"):
        return False
    units = _probe(lambda: _check(torch.cpu._is_avx512_bf16_supported() or _amx()))
    return units and _probe(lambda: _check(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def _amx() -> bool:
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except Exception:
        return False


def _check(value: object) -> None:
    if not value:
        raise RuntimeError("not supported")


@functools.lru_cache(maxsize=1)
def detect() -> Capabilities:
    """This machine's capabilities (measured once per process)."""
    capability = torch.backends.cpu.get_cpu_capability()
    mkldnn = torch.backends.mkldnn.is_available()
    native_bf16 = _native_bf16(capability)
    cuda = torch.cuda.is_available()
    return Capabilities(
        cpu_model=cpu_model(),
        cpu_vendor=_cpu_vendor(),
        cpu_capability=capability,
        cpu_native_bf16=native_bf16,
        cpu_amx=_amx() and capability.startswith("AVX512"),
        mkl=torch.backends.mkl.is_available(),
        mkldnn=mkldnn,
        onednn_fp32_linear=mkldnn and _probe(lambda: _onednn_linear(torch.float32)),
        onednn_bf16_linear=mkldnn
        and native_bf16
        and _probe(lambda: _onednn_linear(torch.bfloat16)),
        onednn_fp32_conv=mkldnn and _probe(_onednn_conv),
        cuda=cuda,
        cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
    )
