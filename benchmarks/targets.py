"""Measure the speed targets of the fast path against the reference (official-order) path.

    python benchmarks/targets.py [--runs 3] [--threads 2] [--repeats 10] [--out benchmarks/results]

Every target is a ratio measured within one suite run, the variants interleaved on the same
weights (``tokenmix.bench``): inference at 224, batch 8, fp32 and bf16 autocast, and a training
step (forward + backward + AdamW). The suite runs ``--runs`` times (inference and training
alternating) and the median ratio decides, with the range shown: on these shared machines one
run's ratio moves by several per cent with the host's load. Writes ``targets-infer.{json,csv}``,
``targets-train.{json,csv}`` (the last run) and ``targets.md`` (the table below, every run's
table, the machine and its load average). Never run as a test: the script reports and does not
assert.

Targets (from issue 5), throughput ratio to the fp32 reference path and peak-memory ratio:

==================  ===================  ======
model               variant              target
==================  ===================  ======
dfformer_s18        fast fp32            1.5
dfformer_s18        fast bf16            2.5
cdfformer_s18       fast fp32            1.5
cdfformer_s18       fast bf16            2.5
lvvit_s             fast fp32            1.15
lvvit_s             fast bf16            2.0
dfformer_s18        train step fp32      1.3
all of the above    peak memory          <= 1.0 (inference)
==================  ===================  ======
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from tokenmix.bench.suite import SuiteConfig, SuiteResult, format_table, run_suite, write_results

TARGETS = {
    ("dfformer_s18", "fast"): 1.5,
    ("dfformer_s18", "fast@bf16"): 2.5,
    ("cdfformer_s18", "fast"): 1.5,
    ("cdfformer_s18", "fast@bf16"): 2.5,
    ("lvvit_s", "fast"): 1.15,
    ("lvvit_s", "fast@bf16"): 2.0,
}
TRAIN_TARGETS = {("dfformer_s18", "fast"): 1.3}


def _summary(
    results: list[SuiteResult], targets: dict[tuple[str, str], float], label: str
) -> list[str]:
    """One table row per target: the median over the runs decides, the range is shown."""
    lines = []
    for row in results[0].rows:
        target = targets.get((row.model, row.path))
        if target is None:
            continue
        same = [
            r for res in results for r in res.rows if (r.model, r.path) == (row.model, row.path)
        ]
        speedups = [r.speedup_vs_reference for r in same if r.speedup_vs_reference is not None]
        memories = [r.memory_vs_reference for r in same if r.memory_vs_reference is not None]
        shares = [r.matmul_peak_share for r in same if r.matmul_peak_share is not None]
        speedup = statistics.median(speedups) if speedups else None
        memory = max(memories) if memories else None
        ok = speedup is not None and speedup >= target and (memory is None or memory <= 1.0)
        spread = f" ({min(speedups):.2f}-{max(speedups):.2f})" if len(speedups) > 1 else ""
        lines.append(
            f"| {row.model} | {label} {row.path} | {target:.2f}x | "
            f"{'-' if speedup is None else f'{speedup:.2f}x'}{spread} | "
            f"{'-' if memory is None else f'{memory:.2f}'} | "
            f"{f'{statistics.median(shares):.0%}' if shares else '-'} | "
            f"{'met' if ok else 'NOT met'} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="suite runs; the median decides")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    common = {"threads": args.threads, "repeats": args.repeats, "warmup": args.warmup}
    infer_config = SuiteConfig(
        models=("dfformer_s18", "cdfformer_s18", "lvvit_s"),
        resolutions=(224,),
        batch=8,
        paths=("fast", "reference", "fast@bf16", "reference@bf16"),
        **common,
    )
    train_config = SuiteConfig(
        models=("dfformer_s18",),
        resolutions=(224,),
        batch=8,
        train=True,
        paths=("fast", "reference", "fast@bf16"),
        **common,
    )
    infers, trains = [], []
    for run in range(args.runs):  # alternate, so a slow spell of the machine hits both
        print(f"run {run + 1}/{args.runs}")
        infers.append(run_suite(infer_config))
        print(format_table(infers[-1]))
        trains.append(run_suite(train_config))
        print(format_table(trains[-1]))
    infer, train = infers[-1], trains[-1]
    write_results(infer, args.out, "targets-infer", plot=False)
    write_results(train, args.out, "targets-train", plot=False)

    m = infer.machine
    lines = [
        "# Speed targets: fast path vs reference (official-order) path",
        "",
        f"{m['date']}, {m['cpu']}, {m['threads']} threads, torch {m['torch']}; load average "
        f"{m['load_average_start'][0]:.2f} -> {m['load_average_end'][0]:.2f} (inference), "
        f"{train.machine['load_average_start'][0]:.2f} -> "
        f"{train.machine['load_average_end'][0]:.2f} (training), last run. Batch 8 at "
        f"224x224; variants interleaved on the same weights in each run; speed-up: median of "
        f"{args.runs} runs (range); peak memory: the highest ratio of the runs. Matmul peaks "
        "(GFLOP/s, last run): "
        + ", ".join(f"{k} {v:.0f}" for k, v in m.get("matmul_peak_gflops", {}).items()),
        f"Fast path's float32 CPU linears: {m.get('fp32_cpu_linear', '-')}.",
        "",
        "| model | variant | target | speed-up | peak memory vs ref | share of matmul peak | |",
        "|---|---|---|---|---|---|---|",
        *_summary(infers, TARGETS, "inference"),
        *_summary(trains, TRAIN_TARGETS, "train step"),
        "",
        "Every run:",
        "",
        "```",
        *(format_table(r) + "\n" for pair in zip(infers, trains, strict=True) for r in pair),
        "```",
    ]
    (args.out / "targets.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: 7 + len(TARGETS) + len(TRAIN_TARGETS)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
