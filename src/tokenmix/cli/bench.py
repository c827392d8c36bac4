"""Benchmark throughput, latency, peak memory and GMACs, fast path against the reference path.

Each (model, resolution, path) is measured in a fresh worker process: peak memory first, over
steps after one uncounted warm-up step (CUDA: max allocated; CPU: peak resident-set growth),
then the paths timed interleaved on the same weights (warm-up, then the median of repeated
device-synchronised runs). The reference path
is every layer in the official operation order (tokenmix.layers.set_reference_mode), so
"speedup" is the fast path's throughput over the official implementation's, measured in one
run. A size that runs out of memory is reported as OOM. Results go to
benchmarks/results/<name>.{json,csv} with throughput/memory plots against resolution.

Examples:
  tokenmix bench --models dfformer_s18,cdfformer_s18 --res 224 --threads 2
  tokenmix bench --models dfformer_s18,cdfformer_s18,gfformer_s18,convformer_s18,caformer_s18 \\
      --res 224,384,512,768,1024 --paths fast
  tokenmix bench --models dfformer_s18 --paths fast,reference,fast@bf16   # bf16 vs fp32 reference
  tokenmix bench --models dfformer_s18 --train --dtype bf16
  tokenmix bench --device cuda --dtype fp16 --train --compile
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "benchmark speed, memory and GMACs (fast vs official-order reference path)"


def _csv(kind: type) -> object:
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {e}") from None
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from tokenmix.bench.suite import DEFAULT_MODELS

    p.add_argument("--models", type=_csv(str), default=DEFAULT_MODELS, help="comma-separated names")
    p.add_argument("--res", type=_csv(int), default=(224,), help="resolutions, e.g. 224,384,512")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--train", action="store_true", help="time forward + backward + AdamW step")
    p.add_argument(
        "--dtype",
        choices=("fp32", "auto", "bf16", "fp16"),
        default="fp32",
        help="bf16/fp16: autocast (FFTs stay float32); fp16 on CUDA only; auto: bf16 where the "
        "device has bf16 units, else fp32 (bf16 without them warns and runs fp32)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument(
        "--paths",
        type=_csv(str),
        default=("fast", "reference"),
        help="variants: fast, reference, or PATH@DTYPE such as fast@bf16 (default "
        "fast,reference; speed-ups are relative to `reference`)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument(
        "--cpu-allocator",
        choices=("system", "retain"),
        default="system",
        help="glibc malloc of the timing runs: system (defaults, as eval/predict and the "
        "official code run) or retain (keeps freed memory, as `tokenmix train` runs); with "
        "system, paths that allocate more also pay page faults every step",
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="CPU: cap per worker (default 80%% of available memory); beyond it: OOM",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker process")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    p.add_argument("--name", default=None, help="file name stem (default: config + time stamp)")
    p.add_argument("--no-plot", action="store_true")


def run(args: argparse.Namespace) -> int:
    from tokenmix.bench.suite import (
        SuiteConfig,
        default_name,
        format_table,
        run_suite,
        write_results,
    )
    from tokenmix.models import list_models

    known = set(list_models())
    unknown = [m for m in args.models if m not in known]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; see `tokenmix models`")
    config = SuiteConfig(
        models=args.models,
        resolutions=args.res,
        batch=args.batch,
        train=args.train,
        dtype=args.dtype,
        compile=args.compile,
        channels_last=args.channels_last,
        device=args.device,
        paths=args.paths,
        warmup=args.warmup,
        repeats=args.repeats,
        memory=not args.no_memory,
        threads=args.threads,
        memory_limit_gb=args.memory_limit_gb,
        timeout_s=args.timeout,
        cpu_allocator=args.cpu_allocator,
    )
    result = run_suite(config)
    print(format_table(result))
    for path in write_results(
        result, args.out, args.name or default_name(config), not args.no_plot
    ):
        print(f"wrote {path}")
    return 0 if all(r.status in ("ok", "oom") for r in result.rows) else 1
