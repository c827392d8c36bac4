"""CIFAR-10 from scratch on a small CPU: test accuracy against wall-clock time.

Runs the recipe ``configs/cifar10_cpu.yaml`` through the normal engine (``tokenmix.engine.fit``,
the same code as ``tokenmix train``) on the CIFAR-10 JPEGs, evaluating on the full 10,000-image
test set, and records top-1 against seconds since the command started (setup and the one-time
decode into RAM included). The recipe's choices and why are in its comments; the target is
85 % top-1 within 30 minutes on 2 cores.

Run (about 30 minutes on 2 cores; the times depend on what else the machine is doing):
  .venv/bin/python benchmarks/train_cifar10.py --data ../shared/data/cifar10

Writes ``benchmarks/results/train_cifar10.{json,md,png}``; ``.json`` has ``final_top1``
(percent, full test set) and ``wall_time_s`` (training and evaluation) at the top level. The
run folder (checkpoints, not committed) is ``runs/bench_cifar10``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from tokenmix import kernels
from tokenmix.config import load_config, to_dict
from tokenmix.engine.metrics import read_metrics
from tokenmix.engine.train import fit

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "cifar10_cpu.yaml"


def machine_record(load_before: tuple[float, ...]) -> dict[str, object]:
    """Where the numbers come from: CPU model and capability, torch, threads, load."""
    caps = kernels.detect()
    return {
        "cpu": caps.cpu_model,
        "cpu_class": caps.cpu_class,
        "cpu_capability": caps.cpu_capability,
        "native_bf16": caps.cpu_native_bf16,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }


def plot_curve(curve: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["seconds"] / 60 for c in curve], [c["top1"] for c in curve], marker="o")
    ax.axhline(85, color="grey", linestyle="--", linewidth=1)
    ax.axvline(30, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("wall clock (minutes since start)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--set", nargs="*", default=[], help="extra dotted overrides")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_cifar10"
    )
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench_cifar10")
    parser.add_argument("--fresh", action="store_true", help="delete --run-dir first")
    args = parser.parse_args()

    overrides = [f"data.train={args.data}", "log.progress=false", *args.set]
    cfg = load_config(args.recipe, overrides)
    if args.run_dir.exists():
        if not args.fresh:
            raise SystemExit(f"{args.run_dir} exists; remove it or pass --fresh")
        shutil.rmtree(args.run_dir)
    load_before = os.getloadavg()
    t0 = time.time()
    result = fit(cfg, args.run_dir)
    total = time.time() - t0

    records = read_metrics(args.run_dir)
    curve = [
        {
            "epoch": r["epoch"],
            "seconds": round(r["time"] - t0, 1),
            "top1": round(r["top1"], 2),
            "loss": round(r["loss"], 4),
            "views": r.get("views", 1),
        }
        for r in records
        if r["kind"] == "eval"
    ]
    throughput = sorted(r["samples_per_s"] for r in records if r["kind"] == "train")
    machine = machine_record(load_before)
    report = {
        "benchmark": "train_cifar10",
        "final_top1": round(result.final["top1"], 2),
        "final_top5": round(result.final["top5"], 2),
        "wall_time_s": round(total, 1),
        "recipe": str(args.recipe.relative_to(ROOT))
        if args.recipe.is_relative_to(ROOT)
        else str(args.recipe),
        "overrides": overrides,
        "test_images": 10000,
        "train_throughput_img_s_median": throughput[len(throughput) // 2] if throughput else None,
        "accuracy_vs_time": curve,
        "machine": machine,
        "config": to_dict(cfg),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    where = (
        f"{machine['cpu']} ({machine['cpu_class']}, native bf16 "
        f"{'yes' if machine['native_bf16'] else 'no'}), {machine['logical_cpus']} cores, "
        f"torch {machine['torch']}, load average {machine['load_average_before']} before, "
        f"{machine['load_average_after']} after"
    )
    plot_curve(curve, args.out.with_suffix(".png"), f"{report['recipe']}: {where}")
    lines = [
        "# CIFAR-10 from scratch on 2 CPU cores: test top-1 against wall clock",
        "",
        f"`python benchmarks/train_cifar10.py` — recipe `{report['recipe']}`"
        + (f" with `{' '.join(args.set)}`" if args.set else "")
        + "; full 10,000-image test set.",
        f"Machine: {where}.",
        "",
        "| epoch | minutes | test top-1 (%) | test loss | views per image |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {c['epoch']} | {c['seconds'] / 60:.1f} | {c['top1']:.2f} | {c['loss']:.4f} "
            f"| {c['views']} |"
            for c in curve
        ],
        "",
        "Views per image: the evaluation's test-time views (`eval.hflip`, `eval.shift`; with"
        " `eval.tta: last` only the final evaluation uses them).",
        "",
        f"Final: **{report['final_top1']:.2f} % top-1** ({report['final_top5']:.2f} % top-5) in "
        f"{total / 60:.1f} min wall clock (training + evaluation, setup included); median "
        f"{report['train_throughput_img_s_median']} train img/s.",
        "",
        f"![accuracy against wall clock]({args.out.with_suffix('.png').name})",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
