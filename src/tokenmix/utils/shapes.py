"""Normalising size arguments."""

from __future__ import annotations

from collections.abc import Sequence


def to_2tuple(v: int | Sequence[int]) -> tuple[int, int]:
    """``7`` -> ``(7, 7)``; ``(h, w)`` -> ``(int(h), int(w))``. Anything else is an error."""
    if isinstance(v, int):
        return v, v
    h, w = v
    return int(h), int(w)
