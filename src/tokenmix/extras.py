"""Optional dependencies: import them only where needed, and say which extra installs them.

The base install stays small (torch, numpy, safetensors, kornia, Pillow, matplotlib, ...);
the parts only some users need live in the extras declared in ``pyproject.toml``:

- ``export``: onnx, onnxscript, onnxruntime (``tokenmix export``, :mod:`tokenmix.export`);
- ``hub``: huggingface_hub (weights on the Hugging Face Hub);
- ``timm``: timm (tokenmix models inside timm's ``create_model``);
- ``mm``: mmengine (backbones for OpenMMLab detection and segmentation).

Code that needs one calls :func:`require` at the point of use, so ``import tokenmix`` never
pays for them and a missing one fails with the command that fixes it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "hub": ("huggingface_hub",),
    "timm": ("timm",),
    "mm": ("mmengine",),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``tokenmix[extra]``.

    Args:
        module: the import name, e.g. ``"onnxruntime"``.
        extra: the extra of ``pyproject.toml`` that installs it (one of :data:`EXTRAS`).
        purpose: what needs it, for the message (e.g. ``"verifying an ONNX export"``).
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras are {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        what = purpose or module
        raise MissingExtraError(
            f"{what} needs {module}, which is not installed: pip install 'tokenmix[{extra}]' ({e})"
        ) from e
