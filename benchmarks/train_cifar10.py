"""CIFAR-10 training on a small CPU: test accuracy against wall-clock time.

Runs ``configs/cifar10_dfformer_s18.yaml`` (the seed project's CIFAR-10 setup) through the
normal engine, adapted to 2 CPU cores. What changes and why:

- model: a CDFFormer with the S18 layout shrunk to depths (2, 2, 4, 2) and dims (32, 64, 128,
  192) (2.6 M parameters), trained from scratch at CIFAR's native 32x32 instead of an
  ImageNet-pretrained DFFormer-S18 at 224 (49x the pixels, ~50x the compute per image);
- optimizer: Adam as in the recipe, but lr 2e-3 with a 1-epoch warmup instead of 1e-4 (that
  rate is for fine-tuning pretrained weights; from scratch it learns far too slowly);
- epochs: a handful instead of the recipe's 10 at 224 on a GPU.

Augmentation (random-resized crop 0.6-1, colour jitter 0.2, flip, rotation 20), label
smoothing 0.1 and batch 128 are the recipe's. Every epoch is evaluated on the full 10,000-image
test set; the result table gives seconds since the start of training against top-1.

One compute thread and one loader process use the two cores: with two compute threads, every
operation waits for the slower thread, and on a shared machine that is often 10x slower.

Run (about 10 minutes on 2 cores; the numbers depend on what else the machine is doing):
  .venv/bin/python benchmarks/train_cifar10.py --data /work/shared/data/cifar10

Writes ``benchmarks/results/train_cifar10.json`` and ``.md`` (and the run folder under
``runs/bench_cifar10``, which holds checkpoints and is not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from tokenmix.config import load_config, to_dict
from tokenmix.engine.metrics import read_metrics
from tokenmix.engine.train import fit

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "cifar10_dfformer_s18.yaml"

CPU_ADAPTATION = [
    "model.name=cdfformer_s18",
    "model.pretrained=false",
    "model.img_size=32",
    "model.kwargs.depths=[2,2,4,2]",
    "model.kwargs.dims=[32,64,128,192]",
    "optim.lr=2e-3",
    "sched.warmup_epochs=1",
    "sched.warmup_lr=1e-5",
    "train.amp=none",
    "data.num_workers=1",
    "log.every_steps=50",
    "log.tensorboard=false",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default="/work/shared/data/cifar10", help="CIFAR-10 folder or archive"
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-limit", type=int, default=None, help="train on a fixed subset")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="compute threads; 1 (+ 1 loader process) suits a shared 2-core machine, where "
        "2 threads stall whenever another job holds a core",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_cifar10"
    )
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench_cifar10")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args()

    overrides = [
        *CPU_ADAPTATION,
        f"data.train={args.data}",
        f"train.epochs={args.epochs}",
        f"log.progress={str(args.progress).lower()}",
    ]
    if args.train_limit:
        overrides.append(f"data.train_limit={args.train_limit}")
    if args.threads:
        overrides.append(f"train.cpu_threads={args.threads}")
    cfg = load_config(RECIPE, overrides)
    if args.run_dir.exists():
        raise SystemExit(f"{args.run_dir} exists; remove it or pass --run-dir")
    load_before = os.getloadavg()
    t0 = time.time()
    result = fit(cfg, args.run_dir)
    total = time.time() - t0

    records = read_metrics(args.run_dir)
    # seconds since the command started: setup (dataset listing, model build) included
    curve = [
        {
            "epoch": r["epoch"],
            "seconds": round(r["time"] - t0, 1),
            "top1": round(r["top1"], 2),
            "loss": round(r["loss"], 4),
        }
        for r in records
        if r["kind"] == "eval"
    ]
    throughput = [r["samples_per_s"] for r in records if r["kind"] == "train"]
    report = {
        "benchmark": "train_cifar10",
        "recipe": str(RECIPE.relative_to(ROOT)),
        "overrides": overrides,
        "final_top1": round(result.final["top1"], 2),
        "final_top5": round(result.final["top5"], 2),
        "train_images_per_epoch": result.steps * cfg.train.batch_size // max(result.epochs, 1),
        "wall_clock_s": round(total, 1),
        "train_throughput_img_s_median": sorted(throughput)[len(throughput) // 2]
        if throughput
        else None,
        "accuracy_vs_time": curve,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "note": "shared machine: other jobs ran at the same time, so times are upper bounds",
        },
        "config": to_dict(cfg),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [
        "# CIFAR-10 on 2 CPU cores: test top-1 against wall-clock time",
        "",
        f"Recipe `{report['recipe']}` adapted to CPU ({', '.join(f'`{o}`' for o in CPU_ADAPTATION[:5])}, ...;",
        "see `benchmarks/train_cifar10.py`). Full 10,000-image test set after every epoch.",
        "",
        "| epoch | seconds | test top-1 (%) | test loss |",
        "|---:|---:|---:|---:|",
        *[
            f"| {c['epoch']} | {c['seconds']:.0f} | {c['top1']:.2f} | {c['loss']:.4f} |"
            for c in curve
        ],
        "",
        f"Final: **{report['final_top1']:.2f}% top-1** ({report['final_top5']:.2f}% top-5) in "
        f"{report['wall_clock_s']:.0f} s wall clock, median {report['train_throughput_img_s_median']} train img/s; "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {report['machine']['load_average_before']} "
        f"before and {report['machine']['load_average_after']} after (shared machine).",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
