"""The kernel backend: what this machine runs, and which kernel every layer uses.

Everything machine-specific lives here -- detecting capabilities (public torch APIs, each
special kernel proved by a tiny call), the thresholds measured per CPU class
(``thresholds.json``, written by ``benchmarks/kernel_thresholds.py``), the private ops
(``torch.ops.mkldnn``, in-place ``aten`` ops) and the amp policy. Model code keeps only the
device-independent algebra (spectrum tricks, BatchNorm folding) and calls the kernels named by
the choices its layers resolved once, at construction (shown in each layer's ``repr``).

- :func:`detect`: the machine's :class:`Capabilities`.
- :func:`choose`: a layer's kernel for a family of :data:`CHOICES`; :func:`force` pins choices
  (tests, comparisons); ``TOKENMIX_KERNELS=plain`` uses plain ops everywhere.
- :func:`resolve_amp`: ``auto``/``bf16``/``fp16``/``none`` -> the autocast dtype here.
- :func:`retain_freed_memory`: glibc ``malloc`` keeps freed memory (CPU training, no page
  fault storm per step).
- :func:`explain`: capabilities and every layer type's choices, for ``tokenmix info``.
"""

from __future__ import annotations

from typing import Any

import torch

from .allocator import retain_freed_memory
from .amp import AMP_CHOICES, autocast, native_bf16, resolve_amp
from .capabilities import Capabilities, cpu_model, detect
from .policy import CHOICES, PLAIN, choose, choose_linear, force, forced, runnable, thresholds

__all__ = [
    "AMP_CHOICES",
    "CHOICES",
    "PLAIN",
    "Capabilities",
    "autocast",
    "choose",
    "choose_linear",
    "cpu_model",
    "detect",
    "explain",
    "force",
    "forced",
    "layer_choices",
    "native_bf16",
    "resolve_amp",
    "retain_freed_memory",
    "runnable",
    "summary_line",
    "thresholds",
]


def layer_choices(model: Any) -> dict[str, dict[str, set[str]]]:
    """``{layer class: {family: options used}}`` over a model's layers (their ``kernels``)."""
    out: dict[str, dict[str, set[str]]] = {}
    for module in model.modules():
        chosen = getattr(module, "kernels", None)
        if isinstance(chosen, dict):
            per = out.setdefault(type(module).__name__, {})
            for family, option in chosen.items():
                per.setdefault(family, set()).add(option)
    return out


def summary_line() -> str:
    """One line naming the CPU, its capability and bf16 units (CI and test headers print it)."""
    caps = detect()
    return (
        f"tokenmix kernels: {caps.cpu_model} [{caps.cpu_class}], native bf16 "
        f"{'yes' if caps.cpu_native_bf16 else 'no'}, AMX {'yes' if caps.cpu_amx else 'no'}, "
        f"oneDNN fp32/bf16 linear {caps.onednn_fp32_linear}/{caps.onednn_bf16_linear}, "
        f"CUDA {caps.cuda}, torch {torch.__version__}"
    )


def explain(model_names: tuple[str, ...] = ()) -> str:
    """Capabilities, thresholds and the kernel choices of every layer type, as text."""
    from ..models import create_model

    caps = detect()
    lines = ["machine:"]
    lines += [f"  {k}: {v}" for k, v in caps.as_dict().items()]
    lines.append(f"  cpu_class: {caps.cpu_class}")
    lines.append(
        f"  amp auto: cpu -> {'bf16' if caps.cpu_native_bf16 else 'fp32'}"
        + (f", cuda -> {'bf16' if caps.cuda_bf16 else 'fp32'}" if caps.cuda else "")
    )
    lines.append("thresholds:")
    lines += [f"  {k}: {v}" for k, v in thresholds(caps).items()]
    lines.append("unavailable kernels:")
    missing = [
        f"  {family}={option}: {why}"
        for family, options in CHOICES.items()
        for option in options
        if (why := runnable(family, option, caps))
    ]
    lines += missing or ["  none"]
    names = model_names or ("dfformer_s18", "cdfformer_s18", "caformer_s18", "lvvit_s")
    for name in names:
        lines.append(f"{name}:")
        with torch.device("meta"):  # no memory, no initialisation cost
            model = create_model(name)
        for layer, families in layer_choices(model).items():
            desc = ", ".join(f"{f}={'/'.join(sorted(o))}" for f, o in families.items())
            lines.append(f"  {layer}: {desc}")
    return "\n".join(lines)
