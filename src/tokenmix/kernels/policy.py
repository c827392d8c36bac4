"""Which kernel each layer uses: resolved once per layer, forcible for tests and comparisons.

A choice is a name per kernel family (:data:`CHOICES`). ``auto`` picks from the machine's
:class:`~tokenmix.kernels.capabilities.Capabilities` and the thresholds table
(``thresholds.json``, written by ``benchmarks/kernel_thresholds.py`` per CPU class); a choice
the machine cannot run (not proved by :func:`~tokenmix.kernels.capabilities.detect`) falls back
to the plain one. :func:`force` pins choices while layers are built, and the environment
variable ``TOKENMIX_KERNELS=plain`` pins every family to its plain ``F.*`` op.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from .capabilities import Capabilities, detect

CHOICES: dict[str, tuple[str, ...]] = {
    # float32 CPU linear: oneDNN's inner product forward and backward, oneDNN forward with the
    # backward products in torch.mm (MKL/OpenBLAS), or F.linear
    "linear": ("onednn", "onednn_fwd", "blas"),
    # ReLU after a linear in CPU inference: fused as a oneDNN post-op, or a separate pass
    "linear_relu": ("onednn", "unfused"),
    # conv + folded BN + ReLU in CPU float32 inference
    "conv_relu": ("onednn", "unfused"),
    # bf16/fp16 attention on CPU with a small score matrix: explicit products, or SDPA
    "attention": ("explicit", "sdpa"),
    # 2-D real DFT of small maps: one dense matrix product, or torch.fft
    "dft": ("dense", "fft"),
    # LV-ViT stem in inference: a few images at a time, or the whole batch
    "stem": ("chunked", "whole"),
}
PLAIN = {family: options[-1] for family, options in CHOICES.items()}
"""The plain choice of every family: public ``F.*`` / ``torch.fft`` ops only."""

_forced: dict[str, str] = {}


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    return json.loads((Path(__file__).with_name("thresholds.json")).read_text())


def thresholds(caps: Capabilities | None = None) -> dict[str, Any]:
    """The thresholds for this machine's CPU class (``default`` when it was not measured)."""
    caps = caps or detect()
    table = _table()
    return {**table["default"], **table.get(caps.cpu_class, {})}


@contextmanager
def force(**choices: str) -> Iterator[None]:
    """Pin kernel choices for the layers built (and the calls made) inside the block.

    ``force(linear="blas", dft="fft")``; ``force(**PLAIN)`` for plain ops everywhere. Unknown
    families or options are errors.
    """
    for family, option in choices.items():
        if family not in CHOICES:
            raise ValueError(f"unknown kernel family {family!r}; known: {', '.join(CHOICES)}")
        if option not in (*CHOICES[family], "auto"):
            raise ValueError(
                f"kernel {family}={option!r}: choose from {', '.join(CHOICES[family])} or auto"
            )
    previous = dict(_forced)
    _forced.update({k: v for k, v in choices.items()})
    try:
        yield
    finally:
        _forced.clear()
        _forced.update(previous)


def forced(family: str) -> str:
    """The pinned option of ``family`` (``auto`` when none: the machine decides)."""
    if os.environ.get("TOKENMIX_KERNELS", "").lower() == "plain":
        return PLAIN[family]
    return _forced.get(family, "auto")


def runnable(family: str, option: str, caps: Capabilities | None = None) -> str | None:
    """Why ``option`` of ``family`` cannot run on this machine, or None when it can."""
    caps = caps or detect()
    if option == PLAIN[family]:
        return None
    needs = {
        ("linear", "onednn"): (caps.onednn_fp32_linear, "oneDNN float32 linear"),
        ("linear", "onednn_fwd"): (caps.onednn_fp32_linear, "oneDNN float32 linear"),
        ("linear_relu", "onednn"): (caps.onednn_fp32_linear, "oneDNN float32 linear"),
        ("conv_relu", "onednn"): (caps.onednn_fp32_conv, "oneDNN float32 convolution"),
    }
    ok, what = needs.get((family, option), (True, ""))
    return None if ok else f"{what} did not run on this CPU ({caps.cpu_capability})"


def choose(family: str, **shape: int) -> str:
    """Resolve ``family``'s kernel for a layer (call once, at construction).

    Shape arguments (``linear``'s backward products follow the table's ``linear_grad``):
    ``linear``: ``in_features``, ``out_features``; ``dft``: ``points``.
    """
    caps = detect()
    option = forced(family)
    if option == "auto":
        option = _auto(family, caps, shape)
    return option if runnable(family, option, caps) is None else PLAIN[family]


def _auto(family: str, caps: Capabilities, shape: dict[str, int]) -> str:
    table = thresholds(caps)
    if family in ("linear", "linear_relu"):
        blas_min = table["blas_min_features"]
        wide = min(shape.get("in_features", 0), shape.get("out_features", 0))
        if blas_min is not None and caps.mkl and wide >= blas_min:
            return "blas" if family == "linear" else "unfused"
        if family == "linear" and table["linear_grad"] != "onednn":
            return "onednn_fwd"
        return "onednn"
    if family == "dft":
        return "dense" if shape.get("points", 1 << 30) <= table["dense_dft_max_points"] else "fft"
    return CHOICES[family][0]


def choose_linear(features: int) -> dict[str, str]:
    """The ``linear`` and ``linear_relu`` kernels of a layer whose products have at least
    ``features`` features in and out (the table's MKL-vs-oneDNN threshold is on that count)."""
    return {
        "linear": choose("linear", in_features=features, out_features=features),
        "linear_relu": choose("linear_relu", in_features=features, out_features=features),
    }


def attention_explicit_max_scores() -> int:
    """Largest score matrix (elements) that the ``explicit`` attention kernel materialises."""
    return int(thresholds()["explicit_attention_max_scores"])


def stem_chunk_bytes() -> int:
    """Largest LV-ViT stem activation (bytes of one conv output) run at once in inference."""
    return int(thresholds()["stem_chunk_bytes"])
