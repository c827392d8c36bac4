"""Measure the kernel thresholds of this machine's CPU class and write them into the table.

    python benchmarks/kernel_thresholds.py [--threads 2] [--repeats 7] [--dry-run]

The kernel backend (``tokenmix.kernels``) decides a few choices by size; this script measures
each on this machine, interleaving the two kernels of a pair (``tokenmix.bench.timing``), and
writes the result under the machine's CPU class (``vendor-capability``, e.g. ``amd-AVX2``) in
``src/tokenmix/kernels/thresholds.json``, plus a report in
``benchmarks/results/kernel_thresholds-<class>.md``:

- ``blas_min_features``: the smallest feature count from which F.linear (BLAS: MKL/OpenBLAS) is
  faster than oneDNN's inner product for every larger count measured (MetaFormer/LV-ViT shapes:
  3136 rows, ``f -> 4f`` and ``4f -> f``); null when oneDNN is never slower.
- ``linear_grad``: ``blas`` when ``torch.mm`` (BLAS) runs the two backward products of a oneDNN
  linear (input and weight gradients) faster than oneDNN over a DFFormer-S18 training step's
  shapes at batch 8 (every stage, ``f -> 2f``/``4f`` and back; geometric mean of the
  per-shape ratios below 1), else ``onednn``.
- ``dense_dft_max_points``: the largest map (``H*W`` points, square maps as in the models) up to
  which one dense DFT-matrix product each way beats ``torch.fft`` for 1024 maps.
- ``explicit_attention_max_scores``: the largest score matrix for which explicit bf16 products
  beat SDPA on CPU (measured only where the CPU has bf16 units; elsewhere bf16 is not used).
- ``stem_chunk_bytes`` is kept from the table (it trades page faults against call overhead and
  is not a speed crossover of two kernels).

Emulate an AVX2-only CPU on a newer one with ``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2``. The script reports; it never runs as a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from tokenmix import kernels
from tokenmix.bench.timing import interleaved_timings
from tokenmix.kernels.ops import attention, linear_grad_products, onednn_mm
from tokenmix.layers.spectral import irfft2, rfft2

TABLE = Path(__file__).parents[1] / "src" / "tokenmix" / "kernels" / "thresholds.json"
CPU = torch.device("cpu")


def ratio(a, b, repeats: int) -> float:
    """median time of ``a`` / median time of ``b``, interleaved."""
    t = interleaved_timings({"a": a, "b": b}, CPU, warmup=2, repeats=repeats)
    return t["a"].median / t["b"].median


def blas_vs_onednn(repeats: int) -> list[tuple[int, float]]:
    rows = []
    for f in (64, 128, 192, 256, 320, 384, 448, 512, 768):
        x = torch.randn(3136, f)
        w1, w2 = torch.randn(4 * f, f), torch.randn(f, 4 * f)
        h = torch.randn(3136, 4 * f)

        def blas(x=x, w1=w1, w2=w2, h=h):
            F.linear(x, w1)
            F.linear(h, w2)

        def onednn(x=x, w1=w1, w2=w2, h=h):
            onednn_mm(x, w1)
            onednn_mm(h, w2)

        with torch.no_grad():
            rows.append((f, ratio(blas, onednn, repeats)))
    return rows


# (rows, in, out) of DFFormer-S18's linears at 224 px, batch 8: stage, mixer pwconvs and MLP
GRAD_SHAPES = [
    (rows, f, g)
    for rows, dim in ((25088, 64), (6272, 128), (1568, 320), (392, 512))
    for f, g in ((dim, 2 * dim), (2 * dim, dim), (dim, 4 * dim), (4 * dim, dim))
]


def grad_blas_vs_onednn(repeats: int) -> list[tuple[tuple[int, int, int], float]]:
    """Backward products of ``x @ W^T`` (``grad @ W`` and ``grad^T @ x``), as the linears run
    them: torch.mm / oneDNN."""
    rows = []
    for n, f, g in GRAD_SHAPES:
        x, w, grad = torch.randn(n, f), torch.randn(g, f), torch.randn(n, g)

        def blas(x=x, w=w, grad=grad):
            linear_grad_products(grad, x, w, "onednn_fwd")

        def onednn(x=x, w=w, grad=grad):
            linear_grad_products(grad, x, w, "onednn")

        with torch.no_grad():
            rows.append(((n, f, g), ratio(blas, onednn, repeats)))
    return rows


def dense_vs_fft(repeats: int) -> list[tuple[int, float]]:
    rows = []
    for side in (4, 7, 8, 10, 12, 14, 16, 20, 28):
        x = torch.randn(1024, side, side)

        def dense(x=x, side=side):
            irfft2(rfft2(x, "dense"), (side, side), "dense")

        def fft(x=x, side=side):
            irfft2(rfft2(x, "fft"), (side, side), "fft")

        with torch.no_grad():
            rows.append((side * side, ratio(dense, fft, repeats)))
    return rows


def explicit_vs_sdpa(repeats: int) -> list[tuple[int, float]]:
    rows = []
    for tokens in (197, 400, 785, 1600, 3136):
        q = torch.randn(8, 6, tokens, 64, dtype=torch.bfloat16)

        def explicit(q=q):
            attention(q, q, q, 0.125, 0.0, "explicit")

        def sdpa(q=q):
            attention(q, q, q, 0.125, 0.0, "sdpa")

        with torch.no_grad():
            rows.append((8 * 6 * tokens * tokens, ratio(explicit, sdpa, repeats)))
    return rows


def crossover_from(rows: list[tuple[int, float]], *, below: bool) -> int | None:
    """blas: the smallest size from which every larger one has ratio < 1 (``below=False``);
    dense/explicit: the largest size up to which every smaller one has ratio < 1."""
    if below:
        best = None
        for size, r in rows:
            if r >= 1.0:
                break
            best = size
        return best
    start = None
    for size, r in rows:
        start = (size if start is None else start) if r < 1.0 else None
    return start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dry-run", action="store_true", help="report only, leave the table")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    caps = kernels.detect()
    table = json.loads(TABLE.read_text())
    entry = dict(kernels.thresholds(caps))
    lines = [
        f"# Kernel thresholds: {caps.cpu_class}",
        "",
        f"Machine: {caps.cpu_model}, capability {caps.cpu_capability}, native bf16 "
        f"{caps.cpu_native_bf16}, AMX {caps.cpu_amx}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}, "
        f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}. "
        "Ratios are median times, interleaved (below 1: the first kernel is faster).",
        "",
    ]
    if caps.onednn_fp32_linear:
        rows = blas_vs_onednn(args.repeats)
        entry["blas_min_features"] = crossover_from(rows, below=False)
        lines += ["| features f | BLAS / oneDNN (f->4f + 4f->f, 3136 rows) |", "|---:|---:|"]
        lines += [f"| {f} | {r:.3f} |" for f, r in rows]
        lines += ["", f"blas_min_features = {entry['blas_min_features']}", ""]
        grads = grad_blas_vs_onednn(args.repeats)
        geomean = math.exp(sum(math.log(r) for _, r in grads) / len(grads))
        entry["linear_grad"] = "blas" if geomean < 1.0 else "onednn"
        lines += ["| rows, in, out | backward products: torch.mm / oneDNN |", "|---|---:|"]
        lines += [f"| {n}, {f}, {g} | {r:.3f} |" for (n, f, g), r in grads]
        lines += ["", f"geometric mean {geomean:.3f}: linear_grad = {entry['linear_grad']}", ""]
    rows = dense_vs_fft(args.repeats)
    entry["dense_dft_max_points"] = crossover_from(rows, below=True) or 0
    lines += ["| map points | dense DFT / FFT (1024 maps, forward + inverse) |", "|---:|---:|"]
    lines += [f"| {p} | {r:.3f} |" for p, r in rows]
    lines += ["", f"dense_dft_max_points = {entry['dense_dft_max_points']}", ""]
    if caps.cpu_native_bf16:
        rows = explicit_vs_sdpa(args.repeats)
        entry["explicit_attention_max_scores"] = crossover_from(rows, below=True) or 0
        lines += ["| scores | explicit / SDPA (bf16) |", "|---:|---:|"]
        lines += [f"| {s} | {r:.3f} |" for s, r in rows]
        lines += ["", f"explicit_attention_max_scores = {entry['explicit_attention_max_scores']}"]
    else:
        lines += ["No bf16 units: bf16 is not used here, explicit attention not measured."]
    entry["measured_on"] = (
        f"{caps.cpu_model} ({caps.cpu_capability}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {dt.date.today().isoformat()}, "
        "benchmarks/kernel_thresholds.py"
    )
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.dry_run:
        table[caps.cpu_class] = entry
        TABLE.write_text(json.dumps(table, indent=2) + "\n")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"kernel_thresholds-{caps.cpu_class}.md").write_text(report)
        print(f"wrote {TABLE} [{caps.cpu_class}] and the report")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
