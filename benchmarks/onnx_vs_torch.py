"""onnxruntime against PyTorch on this CPU, for the ONNX export of each model family.

    python benchmarks/onnx_vs_torch.py [--models dfformer_s18,...] [--batch 8] [--threads 2]

Each model is exported twice with ``tokenmix.export.export_model`` (dynamo exporter, output
checked against PyTorch): FFTs as ONNX ``DFT`` nodes, and as DFT-matrix products
(``fft="matmul"``). Both onnxruntime sessions (CPU provider, all graph optimisations,
``--threads`` intra-op threads) and PyTorch (fast path, float32 and bf16 autocast, same
threads) are timed interleaved on the same batch: median of ``--repeats``.
Writes ``onnx_vs_torch.{json,csv}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

from tokenmix import create_model
from tokenmix.bench.suite import cpu_model
from tokenmix.bench.timing import interleaved_timings
from tokenmix.export import export_model

DEFAULT = "dfformer_s18,cdfformer_s18,gfformer_s18,convformer_s18,caformer_s18,lvvit_s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT)
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    cpu = torch.device("cpu")
    rows = []
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = create_model(name, img_size=args.res).eval()
            x = torch.randn(args.batch, 3, args.res, args.res)
            sessions, diffs = {}, {}
            for fft in ("dft", "matmul"):
                path = Path(tmp) / f"{name}-{fft}.onnx"
                report = export_model(model, path, "onnx", dynamic_batch=True, fft=fft)
                sessions[fft] = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
                diffs[fft] = report.max_abs_diff
            feed = {sessions["dft"].get_inputs()[0].name: x.numpy()}

            def torch_fp32(model: torch.nn.Module = model, x: torch.Tensor = x) -> None:
                with torch.inference_mode():
                    model(x)

            def torch_bf16(model: torch.nn.Module = model, x: torch.Tensor = x) -> None:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    model(x)

            timings = interleaved_timings(
                {
                    "onnxruntime_dft": lambda s=sessions["dft"], f=feed: s.run(None, f),
                    "onnxruntime_matmul": lambda s=sessions["matmul"], f=feed: s.run(None, f),
                    "torch_fp32": torch_fp32,
                    "torch_bf16": torch_bf16,
                },
                cpu,
                warmup=args.warmup,
                repeats=args.repeats,
            )
            row = {"model": name, "resolution": args.res, "batch": args.batch}
            row["max_abs_diff_dft"], row["max_abs_diff_matmul"] = diffs["dft"], diffs["matmul"]
            for key, summary in timings.items():
                row[f"{key}_ms"] = round(summary.median * 1e3, 2)
            for fft in ("dft", "matmul"):  # > 1: onnxruntime faster than PyTorch fp32
                row[f"ort_{fft}_speed_vs_torch_fp32"] = round(
                    timings["torch_fp32"].median / timings[f"onnxruntime_{fft}"].median, 3
                )
            rows.append(row)
            print(row, flush=True)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg()[0],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onnx_vs_torch.json").write_text(
        json.dumps({"machine": meta, "rows": rows}, indent=1) + "\n"
    )
    with (args.out / "onnx_vs_torch.csv").open("w", newline="") as f:
        f.write(f"# {meta}\n")
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
