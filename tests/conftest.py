"""Shared fixtures: the reference fixtures in ../shared (skipped cleanly when absent)."""

from __future__ import annotations

import enum
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOKENMIX_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
CIFAR10 = SHARED / "data" / "cifar10"


def require(path: Path) -> Path:
    """Skip the calling test when a shared fixture is missing."""
    if not path.exists():
        pytest.skip(f"shared fixture not available: {path}")
    return path


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def fresh_dynamo():
    """Reset torch.compile's caches around a test.

    Dynamo caches compiled graphs per code object (``MetaFormer.forward`` is one object for
    every model instance) and stops after 8 recompilations of one object; without a reset,
    whether a compile test passes would depend on how many compile tests ran before it.
    """
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# --- timm, for the parity tests (tests/test_timm.py) -----------------------------------------
# timm imports torchvision at load, and no torchvision wheel works with our CPU torch, so the
# tests install timm with --no-deps (`make setup`) and import it against this stand-in. These
# are exactly the torchvision names timm 1.0.31 imports at module load (found by importing it
# against empty modules until it loaded); its other torchvision imports are guarded or inside
# functions the tests do not call. Each stand-in class refuses to be instantiated, so a test
# that reaches real torchvision code fails loudly instead of computing something else.
_TORCHVISION_STAND_IN = {
    "torchvision.transforms": ("ToTensor",),  # timm.data.transforms subclasses it
    "torchvision.datasets": (
        "CIFAR10",
        "CIFAR100",
        "MNIST",
        "KMNIST",
        "FashionMNIST",
        "ImageFolder",
    ),
    "torchvision.ops.misc": ("FrozenBatchNorm2d",),  # isinstance checks in timm.layers
}
# timm.data builds dicts keyed by its members at import; torchvision's values
_INTERPOLATION_MODES = (
    "nearest",
    "nearest-exact",
    "bilinear",
    "bicubic",
    "box",
    "hamming",
    "lanczos",
)


def _stand_in_class(name: str) -> type:
    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"torchvision.{name} is a test stand-in (tests/conftest.py), not usable")

    return type(name, (), {"__init__": refuse, "__module__": "torchvision (test stand-in)"})


def _install_torchvision_stand_in() -> list[str]:
    """Put the stand-in modules into ``sys.modules``; returns their names (to remove them)."""
    modules: dict[str, types.ModuleType] = {}

    def module(name: str) -> types.ModuleType:
        if name not in modules:
            modules[name] = types.ModuleType(name, "torchvision stand-in for importing timm")
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(module(parent), child, modules[name])
        return modules[name]

    for name, attrs in _TORCHVISION_STAND_IN.items():
        for attr in attrs:
            setattr(module(name), attr, _stand_in_class(attr))
    modes = {m.upper().replace("-", "_"): m for m in _INTERPOLATION_MODES}
    module("torchvision.transforms.functional").InterpolationMode = enum.Enum(
        "InterpolationMode", modes
    )
    sys.modules.update(modules)
    return list(modules)


@pytest.fixture(scope="session")
def timm_lib() -> types.ModuleType:
    """timm, imported (against the torchvision stand-in when torchvision is absent), or a skip.

    The stand-in leaves ``sys.modules`` as soon as timm is imported, so no other test (nor the
    ONNX exporter, which probes for torchvision) ever sees it; timm keeps its references.
    """
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (`make setup` installs it for the tests, --no-deps)")
    stand_in = [] if importlib.util.find_spec("torchvision") else _install_torchvision_stand_in()
    try:
        import timm
        import timm.data
    except Exception as e:  # any failure means: this timm needs more than the stand-in has
        what = " with the torchvision stand-in" if stand_in else ""
        pytest.skip(f"timm cannot be imported{what} ({type(e).__name__}: {e})")
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    return timm


def pytest_report_header() -> str:
    """The machine's CPU class first: kernel choices (and skips) depend on it."""
    from tokenmix import kernels

    return kernels.summary_line()
