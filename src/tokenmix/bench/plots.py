"""Throughput and peak memory against input resolution (DFFormer paper, Figures 5 and 6).

One line per model; the fast path solid, the reference path (the official operation order)
dashed and other variants (e.g. ``fast@bf16``) dotted, when they were measured. Sizes that ran out of memory are marked with an ``x`` on the
axis floor, the way the paper shows models that do not fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .suite import BenchRow, SuiteResult


def _series(
    rows: list[BenchRow], attr: str
) -> dict[tuple[str, str], list[tuple[int, float | None]]]:
    out: dict[tuple[str, str], list[tuple[int, float | None]]] = {}
    for r in rows:
        value = getattr(r, attr) if r.status == "ok" else None
        out.setdefault((r.model, r.path), []).append((r.resolution, value))
    return out


def plot_results(result: SuiteResult, stem: Path) -> list[Path]:
    """Write ``<stem>_throughput.png`` and ``<stem>_memory.png``; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = result.config
    mode = "training" if config.train else "inference"
    title = (
        f"{mode}, batch {config.batch}, {config.dtype}, {config.device} "
        f"({result.machine.get('threads')} threads)"
    )
    written = []
    for attr, label, suffix in (
        ("throughput", "throughput (images/s)", "throughput"),
        ("peak_memory_mb", "peak memory (MiB)", "memory"),
    ):
        series = _series(result.rows, attr)
        if not any(v is not None for points in series.values() for _, v in points):
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        models = sorted({m for m, _ in series})
        colors = {m: f"C{i}" for i, m in enumerate(models)}
        for (model, path), points in sorted(series.items()):
            ok = [(r, v) for r, v in points if v is not None]
            style = {"fast": "-", "reference": "--"}.get(path, ":")
            if ok:
                xs, ys = zip(*ok, strict=True)
                name = model if path == "fast" else f"{model} ({path})"
                ax.plot(xs, ys, style, marker="o", color=colors[model], label=name)
            failed = [r for r, v in points if v is None]
            if failed:
                ax.plot(
                    failed,
                    [0.02] * len(failed),
                    "x",
                    color=colors[model],
                    transform=ax.get_xaxis_transform(),  # y in axes units: on the floor
                )
        ax.set_xlabel("input resolution")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.set_xticks(sorted({r.resolution for r in result.rows}))
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}_{suffix}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
