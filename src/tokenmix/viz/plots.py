"""Figures for a run: learning curves, confusion matrix, and a grid of predictions.

Matplotlib with the Agg backend (files only, no display needed); every function writes one PNG
atomically and returns its path. Class and file names are drawn through
:func:`tokenmix.viz.text.plot_text`, so names that are not UTF-8 or contain ``$`` are shown
rather than stopping the figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from tokenmix.utils import atomic_write

from .text import plot_text


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def plot_curves(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Loss (train and eval), eval accuracy and learning rate against optimizer steps."""
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:
        raise ValueError("no train or eval records to plot")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss, ax_acc, ax_lr = axes

    def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in rows if key in r]
        return [r["step"] for r in rows], [r[key] for r in rows]

    ax_loss.plot(*series(train, "loss"), label="train", lw=1)
    if evals:
        ax_loss.plot(*series(evals, "loss"), "o-", label="eval")
        for key, style in (("top1", "o-"), ("top5", "s--"), ("ema_top1", "^-")):
            steps, values = series(evals, key)
            if steps:
                ax_acc.plot(steps, values, style, label=key)
        ax_acc.legend()
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_acc.set_title("eval accuracy (%)")
    ax_lr.plot(*series(train, "lr"))
    ax_lr.set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(confusion: torch.Tensor, classes: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    counts = confusion.double().numpy()
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(classes)
    size = min(4 + 0.45 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        labels = [plot_text(c) for c in classes]
        ax.set_xticks(range(n), labels, rotation=90)
        ax.set_yticks(range(n), labels)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if counts[i, j]:
                        color = "white" if rates[i, j] > 0.5 else "black"
                        ax.text(
                            j,
                            i,
                            int(counts[i, j]),
                            ha="center",
                            va="center",
                            color=color,
                            fontsize=8,
                        )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    return _save(fig, path)


def plot_prediction_grid(
    images: torch.Tensor,
    predictions: Sequence[Sequence[tuple[str, float]]],
    path: Path,
    truths: Sequence[str | None] | None = None,
    names: Sequence[str] | None = None,
) -> Path:
    """Images with their top predictions; titles green when right, red when wrong.

    Args:
        images: ``[N, 3, H, W]`` uint8 (as loaded, before normalisation).
        predictions: per image, ``(label, probability)`` pairs, best first.
        path: output PNG.
        truths: per image, the true label when known.
        names: per image, a short name (file name) shown under the title.
    """
    n = len(images)
    if n == 0:
        raise ValueError("no images to draw")
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(images[i].permute(1, 2, 0).cpu().numpy())
        label, prob = predictions[i][0]
        title = f"{plot_text(label)} ({prob:.0%})"
        color = "black"
        truth = truths[i] if truths is not None else None
        if truth is not None:
            title += f"\ntrue: {plot_text(truth)}"
            color = "green" if truth == label else "red"  # compared as stored, not as shown
        if names is not None:
            title += f"\n{plot_text(names[i])}"
        ax.set_title(title, fontsize=8, color=color)
    return _save(fig, path)
