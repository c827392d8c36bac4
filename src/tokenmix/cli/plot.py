"""Draw a run's learning curves (loss, eval accuracy, learning rate) as a PNG.

Reads RUN_DIR/metrics.jsonl, which training appends to as it goes, so this also works on a
run that is still training or was killed.

Examples:
  tokenmix plot runs/digits_demo
  tokenmix plot runs/digits_demo --out curves.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "learning curves of a run as PNG"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a training run folder")
    p.add_argument(
        "--out", type=Path, default=None, help="output PNG (default RUN_DIR/plots/curves.png)"
    )


def run(args: argparse.Namespace) -> int:
    from tokenmix.engine.metrics import read_metrics
    from tokenmix.viz.plots import plot_curves

    records = read_metrics(args.run_dir)
    path = plot_curves(records, args.out or args.run_dir / "plots" / "curves.png")
    evals = [r for r in records if r.get("kind") == "eval" and "top1" in r]
    if evals:
        best = max(evals, key=lambda r: r["top1"])
        print(
            f"last eval top-1 {evals[-1]['top1']:.2f}% (best {best['top1']:.2f}% at step {best['step']})"
        )
    print(f"wrote {path}")
    return 0
