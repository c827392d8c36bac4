"""One measurement in a fresh process: ``python -m tokenmix.bench.worker '<job json>'``.

The suite starts a worker per measurement so that (1) CPU peak memory is the growth of a fresh
process, (2) a size that runs out of memory, or a crash, is reported instead of ending the
suite, and (3) each measurement starts from the same allocator and cache state. The worker
prints one JSON object on its last stdout line.

Jobs (``kind``):

- ``time``: ``workload`` (a :class:`~tokenmix.bench.workload.Workload` dict), ``paths``,
  ``warmup``, ``repeats``, ``cpu_allocator`` (``system`` or ``retain``: CPU malloc keeps
  freed memory) -> median/quartile seconds per step for each path, interleaved.
- ``memory``: ``workload``, ``path``, ``iterations`` -> peak memory growth in bytes over the
  iterations after one warm-up step.
- ``peak``: ``device``, ``budget_s`` -> measured matrix-product GFLOP/s per kernel and dtype
  (about ``budget_s`` seconds each), and which dtypes ran ``emulated``.

Common keys: ``threads`` (CPU threads), ``memory_limit`` (bytes, CPU address-space cap).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import Any

import torch

from .memory import is_out_of_memory, limit_cpu_memory, peak_memory_growth
from .timing import interleaved_timings, synchronize
from .workload import Workload


def _time_job(job: dict[str, Any]) -> dict[str, Any]:
    workload = Workload(**job["workload"])
    malloc = "default"
    if job.get("cpu_allocator", "system") == "retain" and workload.device == "cpu":
        from .. import kernels

        retained = kernels.retain_freed_memory()
        if retained is None:
            raise RuntimeError("cpu_allocator retain needs glibc malloc, which this is not")
        malloc = retained
    prepared = workload.prepare()
    candidates = {path: (lambda p=path: prepared.step(p)) for path in job["paths"]}
    summaries = interleaved_timings(
        candidates, prepared.device, warmup=job["warmup"], repeats=job["repeats"]
    )
    return {"timings": {path: asdict(s) for path, s in summaries.items()}, "malloc": malloc}


def _memory_job(job: dict[str, Any]) -> dict[str, Any]:
    """Peak growth over ``iterations`` steps after one uncounted step.

    The first step of a fresh process also pays one-time costs that are not the workload's
    memory and differ between paths only by which libraries they touch first: library code
    faulted into the resident set, JIT-compiled oneDNN kernels, FFT plans (CUDA's allocator
    statistic leaves these out too). Activations, workspaces and, in training, gradients and
    optimizer state are allocated afresh by every step, so the counted steps still see them.
    """
    prepared = Workload(**job["workload"]).prepare()
    prepared.step(job["path"])

    def work() -> None:
        for _ in range(job["iterations"]):
            prepared.step(job["path"])

    return {"peak_bytes": peak_memory_growth(work, prepared.device)}


def _gflops(fn: Any, flops: float, device: torch.device, budget_s: float) -> float:
    """Median GFLOP/s of ``fn`` over as many calls as fit in ``budget_s`` (3 to 10)."""
    fn()
    synchronize(device)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 10 and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return flops / sorted(times)[len(times) // 2] / 1e9


def _sized_product(
    device: torch.device, dtype: torch.dtype, max_n: int, call_s: float = 0.1
) -> tuple[int, float]:
    """The matrix size whose product takes about ``call_s`` here (at most ``max_n``), and the
    GFLOP/s measured at 256 to size it: an emulated dtype gets a small product, so the job
    ends in seconds whatever the hardware."""
    a = torch.randn(256, 256, device=device, dtype=dtype)
    rate = _gflops(lambda: torch.mm(a, a), 2.0 * 256**3, device, budget_s=0.05)
    n = int((call_s * rate * 1e9 / 2.0) ** (1 / 3)) // 64 * 64
    return max(256, min(max_n, n)), rate


def _peak_job(job: dict[str, Any]) -> dict[str, Any]:
    """Matrix-product throughput per kernel and dtype, at a size near the kernels' peak.

    Each dtype gets about ``budget_s`` seconds (default 2): the product is sized from a quick
    first measurement. Dtypes this device has no units for are measured too and reported in
    ``emulated`` (their figure is what autocast would get, not a hardware peak).
    """
    from .. import kernels
    from ..kernels.ops import onednn_mm

    device = torch.device(job["device"])
    budget = float(job.get("budget_s", 2.0))
    max_n = 2048 if device.type == "cpu" else 8192
    caps = kernels.detect()
    out: dict[str, float] = {}
    emulated: list[str] = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if device.type == "cpu" and dtype == torch.float16:
            continue
        if dtype == torch.bfloat16 and not kernels.native_bf16(device):
            emulated.append(name)
        n, _ = _sized_product(device, dtype, max_n)
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        flops = 2.0 * n**3
        out[f"{name}_matmul"] = _gflops(lambda a=a, b=b: torch.mm(a, b), flops, device, budget)
        if device.type == "cpu" and dtype == torch.float32 and caps.onednn_fp32_linear:
            out["fp32_onednn_linear"] = _gflops(
                lambda a=a, b=b: onednn_mm(a, b), flops, device, budget
            )
    return {"gflops": out, "emulated": emulated}


JOBS = {"time": _time_job, "memory": _memory_job, "peak": _peak_job}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` in this process and return its result (``status`` ok, oom or error)."""
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    if job.get("memory_limit"):
        limit_cpu_memory(int(job["memory_limit"]))
    try:
        result = JOBS[job["kind"]](job)
    except Exception as e:
        capped_onednn = bool(job.get("memory_limit")) and "could not create a primitive" in str(e)
        if is_out_of_memory(e) or capped_onednn:
            # under an address-space cap oneDNN reports a failed allocation as a failed
            # primitive creation (seen for bf16 at 1024 px with a 0.2 GB cap)
            return {"status": "oom", "error": str(e).splitlines()[0][:300]}
        return {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]}
    return {"status": "ok", **result}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tokenmix.bench.worker '<job json>'", file=sys.stderr)
        return 2
    result = run_job(json.loads(args[0]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
