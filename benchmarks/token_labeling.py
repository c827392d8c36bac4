"""Token labeling's gain, reproduced small: teacher -> relabel -> two students, same budget.

Jiang et al. ("All Tokens Matter", NeurIPS 2021) train LV-ViT with a dense per-token target from
a teacher plus MixToken, and report +0.8-1.2 top-1 over the same student trained with the class
label only. This script runs the method end to end on real images (CIFAR-10 by default, or any
dataset spec ``tokenmix train`` accepts), with the CLI commands a user would type:

1. ``tokenmix train --config configs/cifar10_cpu.yaml`` -- the teacher, unless
   ``--teacher RUN`` names a finished run;
2. ``tokenmix relabel --checkpoint TEACHER --grid 8`` -- its dense top-5 scores for every training
   image, stored on the student's 8x8 token grid (timed: the relabeling cost);
3. ``tokenmix train --config configs/cifar10_lvvit_ce.yaml`` (cross-entropy with CutMix) and
   ``configs/cifar10_lvvit_tl.yaml`` (token labeling + MixToken): the same LV-ViT, data, schedule
   and seeds, once per seed.

Everything trains on the same fixed subset (``--train-limit``) and is evaluated on the full test
set. Results: ``benchmarks/results/token_labeling.{json,md,png}``; the ``.json`` has
``baseline_top1``, ``token_labeling_top1`` (means over seeds, percent) and ``teacher_top1`` at
the top level. The result is reported whatever it is; nothing here is tuned to make token
labeling win.

Run (about 45 minutes on 2 CPU cores with the defaults):
  .venv/bin/python benchmarks/token_labeling.py --data ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_cifar10 import machine_record  # noqa: E402

from tokenmix.config import load_config  # noqa: E402
from tokenmix.engine.metrics import read_metrics  # noqa: E402

TOKENMIX = [sys.executable, "-m", "tokenmix.cli.main"]


def run(cmd: list[str], log: Path) -> float:
    """Run one CLI command (printed), its output to ``log``; the seconds it took."""
    print("$", " ".join(cmd[2:] if cmd[:2] == TOKENMIX[:2] else cmd), flush=True)
    start = time.time()
    with log.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"command failed ({done.returncode}); see {log}")
    return time.time() - start


def train(recipe: str, run_dir: Path, overrides: list[str], log: Path) -> dict:
    seconds = run(
        [
            *TOKENMIX,
            "train",
            "--config",
            str(ROOT / "configs" / recipe),
            "--set",
            f"run.output_dir={run_dir.parent}",
            f"run.name={run_dir.name}",
            "log.progress=false",
            *overrides,
        ],
        log,
    )
    evals = [r for r in read_metrics(run_dir) if r["kind"] == "eval"]
    start = min(r["time"] for r in read_metrics(run_dir))
    return {
        "run": str(run_dir),
        "seconds": round(seconds, 1),
        "top1": evals[-1]["top1"],
        "curve": [
            {"epoch": r["epoch"], "top1": r["top1"], "minutes": round((r["time"] - start) / 60, 2)}
            for r in evals
        ],
    }


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.2f} ± {half:.2f}"


def plot(students: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, runs), color in zip(students.items(), ("tab:blue", "tab:orange"), strict=False):
        for i, r in enumerate(runs):
            ax.plot(
                [c["epoch"] for c in r["curve"]],
                [c["top1"] for c in r["curve"]],
                color=color,
                alpha=0.8,
                marker="o",
                markersize=3,
                label=name if i == 0 else None,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    p.add_argument("--train-limit", type=int, default=10000, help="fixed training subset")
    p.add_argument("--teacher", type=Path, help="a finished teacher run folder (skips step 1)")
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--student-epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_token_labeling")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "token_labeling")
    p.add_argument("--fresh", action="store_true", help="delete --work first")
    args = p.parse_args()

    if args.work.exists():
        if not args.fresh:
            raise SystemExit(f"{args.work} exists; remove it or pass --fresh")
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    load_before = os.getloadavg()
    data = [f"data.train={args.data}", f"data.train_limit={args.train_limit}"]

    # 1. teacher
    if args.teacher:
        teacher_run = args.teacher
        results = json.loads((teacher_run / "results.json").read_text())
        teacher = {"run": str(teacher_run), "seconds": None, "top1": results["final"]["top1"]}
    else:
        teacher_run = args.work / "teacher"
        teacher = train(
            "cifar10_cpu.yaml",
            teacher_run,
            [*data, f"train.epochs={args.teacher_epochs}", "eval.every_epochs=1"],
            args.work / "teacher.log",
        )
    teacher_cfg = load_config(teacher_run / "config.yaml")
    teacher["model"] = teacher_cfg.model.name
    teacher["epochs"] = teacher_cfg.train.epochs
    teacher["train_images"] = teacher_cfg.data.train_limit or "all"
    print(f"teacher: {teacher['top1']:.2f} % top-1", flush=True)

    # 2. relabel the training subset on the students' 8x8 token grid
    labels = args.work / "labels"
    relabel_s = run(
        [
            *TOKENMIX,
            "relabel",
            "--checkpoint",
            str(teacher_run),
            "--data",
            args.data,
            "--out",
            str(labels),
            "--grid",
            "8",
            "--topk",
            "5",
            "--workers",
            "0",
            "--device",
            "cpu",
        ],
        args.work / "relabel.log",
    )
    num_labeled = len(json.loads((labels / "index.json").read_text())["ids"])
    print(f"relabel: {num_labeled} images in {relabel_s:.0f} s", flush=True)

    # 3. students
    students: dict[str, list[dict]] = {
        "baseline (CE + CutMix)": [],
        "token labeling + MixToken": [],
    }
    for seed in args.seeds:
        common = [*data, f"train.epochs={args.student_epochs}", f"train.seed={seed}"]
        students["baseline (CE + CutMix)"].append(
            train(
                "cifar10_lvvit_ce.yaml",
                args.work / f"ce_seed{seed}",
                common,
                args.work / f"ce_seed{seed}.log",
            )
        )
        students["token labeling + MixToken"].append(
            train(
                "cifar10_lvvit_tl.yaml",
                args.work / f"tl_seed{seed}",
                [*common, f"loss.token_labels={labels}"],
                args.work / f"tl_seed{seed}.log",
            )
        )
        for name, runs in students.items():
            print(f"seed {seed} {name}: {runs[-1]['top1']:.2f} %", flush=True)

    base = [r["top1"] for r in students["baseline (CE + CutMix)"]]
    tl = [r["top1"] for r in students["token labeling + MixToken"]]
    machine = machine_record(load_before)
    report = {
        "benchmark": "token_labeling",
        "baseline_top1": round(statistics.fmean(base), 2),
        "token_labeling_top1": round(statistics.fmean(tl), 2),
        "teacher_top1": round(teacher["top1"], 2),
        "gain": round(statistics.fmean(tl) - statistics.fmean(base), 2),
        "seeds": args.seeds,
        "per_seed": {"baseline": base, "token_labeling": tl},
        "train_images": args.train_limit,
        "test_images": 10000,
        "teacher": teacher,
        "relabel": {
            "images": num_labeled,
            "seconds": round(relabel_s, 1),
            "seconds_per_image": round(relabel_s / max(num_labeled, 1), 5),
        },
        "students": students,
        "machine": machine,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    where = (
        f"{machine['cpu']} ({machine['cpu_class']}), {machine['logical_cpus']} cores, torch "
        f"{machine['torch']}, load average {machine['load_average_before']} -> {machine['load_average_after']}"
    )
    plot(
        students,
        args.out.with_suffix(".png"),
        f"LV-ViT students on {args.train_limit} CIFAR-10 images",
    )
    lines = [
        "# Token labeling, reproduced small (CIFAR-10)",
        "",
        f"`python benchmarks/token_labeling.py` — {args.train_limit} training images, full "
        f"10,000-image test set, seeds {args.seeds}; machine: {where}.",
        "",
        "| model | recipe | test top-1 (%) | per seed |",
        "|---|---|---:|---|",
        f"| teacher {teacher['model']} ({teacher['epochs']} epochs on {teacher['train_images']} "
        f"images) | `configs/cifar10_cpu.yaml` | {teacher['top1']:.2f} | |",
        f"| student LV-ViT, CE + CutMix ({args.student_epochs} epochs) | `configs/cifar10_lvvit_ce.yaml` | "
        f"{spread(base)} | {', '.join(f'{v:.2f}' for v in base)} |",
        f"| student LV-ViT, token labeling + MixToken | `configs/cifar10_lvvit_tl.yaml` | "
        f"{spread(tl)} | {', '.join(f'{v:.2f}' for v in tl)} |",
        "",
        f"Gain of token labeling: **{report['gain']:+.2f}** top-1 (mean over seeds; ± is half the "
        f"range). Relabeling {num_labeled} images took {relabel_s:.0f} s "
        f"({report['relabel']['seconds_per_image'] * 1e3:.2f} ms per image, teacher at 32 px, "
        "process start included).",
        "",
        "![student curves](token_labeling.png)",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
