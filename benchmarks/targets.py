"""Measure the speed targets of the fast path against the reference (official-order) path.

    python benchmarks/targets.py [--threads 2] [--repeats 10] [--out benchmarks/results]

Every target is a ratio measured in ONE run, the variants interleaved on the same weights
(``tokenmix.bench``): inference at 224, batch 8, fp32 and bf16 autocast, and a training step
(forward + backward + AdamW). Writes ``targets-infer.{json,csv}``, ``targets-train.{json,csv}``
and ``targets.md`` (the table below, with the machine and its load average). Never run as a
test: timings on a shared machine are noisy, so the script reports and does not assert.

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


def _summary(result: SuiteResult, targets: dict[tuple[str, str], float], label: str) -> list[str]:
    lines = []
    for row in result.rows:
        target = targets.get((row.model, row.path))
        if target is None:
            continue
        speedup = row.speedup_vs_reference
        memory = row.memory_vs_reference
        ok = speedup is not None and speedup >= target and (memory is None or memory <= 1.0)
        lines.append(
            f"| {row.model} | {label} {row.path} | {target:.2f}x | "
            f"{'-' if speedup is None else f'{speedup:.2f}x'} | "
            f"{'-' if memory is None else f'{memory:.2f}'} | "
            f"{'-' if row.matmul_peak_share is None else f'{row.matmul_peak_share:.0%}'} | "
            f"{'met' if ok else 'NOT met'} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    common = {"threads": args.threads, "repeats": args.repeats, "warmup": args.warmup}
    infer = run_suite(
        SuiteConfig(
            models=("dfformer_s18", "cdfformer_s18", "lvvit_s"),
            resolutions=(224,),
            batch=8,
            paths=("fast", "reference", "fast@bf16", "reference@bf16"),
            **common,
        )
    )
    print(format_table(infer))
    write_results(infer, args.out, "targets-infer", plot=False)
    train = run_suite(
        SuiteConfig(
            models=("dfformer_s18",),
            resolutions=(224,),
            batch=8,
            train=True,
            paths=("fast", "reference", "fast@bf16"),
            **common,
        )
    )
    print(format_table(train))
    write_results(train, args.out, "targets-train", plot=False)

    m = infer.machine
    lines = [
        "# Speed targets: fast path vs reference (official-order) path",
        "",
        f"{m['date']}, {m['cpu']}, {m['threads']} threads, torch {m['torch']}; load average "
        f"{m['load_average_start'][0]:.2f} -> {m['load_average_end'][0]:.2f} (inference), "
        f"{train.machine['load_average_start'][0]:.2f} -> "
        f"{train.machine['load_average_end'][0]:.2f} (training). Batch 8 at 224x224; ratios "
        "from one run each, variants interleaved on the same weights. Matmul peaks (GFLOP/s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in m.get("matmul_peak_gflops", {}).items()),
        "",
        "| model | variant | target | speed-up | peak memory vs ref | share of matmul peak | |",
        "|---|---|---|---|---|---|---|",
        *_summary(infer, TARGETS, "inference"),
        *_summary(train, TRAIN_TARGETS, "train step"),
        "",
        "```",
        format_table(infer),
        "",
        format_table(train),
        "```",
    ]
    (args.out / "targets.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: 12 + len(TARGETS) + len(TRAIN_TARGETS)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
