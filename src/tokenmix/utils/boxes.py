"""The CutMix box rule, shared by image CutMix (``data.augment``) and MixToken (``models.lvvit``)."""

from __future__ import annotations

import math


def cut_box(
    grid: tuple[int, int], lam: float, centre: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The official ``rand_bbox`` rule (timm CutMix, TokenLabeling MixToken) on a grid.

    A box of side ``int(side * sqrt(1 - lam))`` centred at ``centre`` (row, column), half sides
    rounded down, clipped to the grid. Returns ``(row0, col0, row1, col1)``. Clipping and
    rounding make its area differ from ``(1 - lam) * rows * cols``: callers recompute the
    mixing weight from the box.
    """
    rows, cols = grid
    cut = math.sqrt(1.0 - lam)
    half_r, half_c = int(rows * cut) // 2, int(cols * cut) // 2
    r, c = centre
    return (
        min(max(r - half_r, 0), rows),
        min(max(c - half_c, 0), cols),
        min(max(r + half_r, 0), rows),
        min(max(c + half_c, 0), cols),
    )
