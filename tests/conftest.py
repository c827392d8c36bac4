"""Shared fixtures: the reference fixtures in ../shared (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

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


def pytest_report_header() -> str:
    """The machine's CPU class first: kernel choices (and skips) depend on it."""
    from tokenmix import kernels

    return kernels.summary_line()
