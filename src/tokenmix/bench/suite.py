"""The benchmark suite behind ``tokenmix bench``: throughput, latency, peak memory, GMACs.

For every model and resolution it runs, each in a fresh worker process
(:mod:`tokenmix.bench.worker`):

1. peak memory of each path (``fast``, ``reference``, or a path in another autocast dtype such
   as ``fast@bf16``), a process per path;
2. timing of all paths that fit in memory, interleaved in one process on the same weights,
   so ``fast / reference`` is a ratio measured under the same conditions (the same malloc
   setting too: ``cpu_allocator``);

and once per run the machine's matrix-product peak, so achieved GFLOP/s can be put against
what the hardware does on its best kernel. Results are written as JSON (with the machine,
torch version, thread count and load average) and CSV, and plotted against resolution
(:mod:`tokenmix.bench.plots`). A size that does not fit in memory is reported as ``oom``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .workload import DTYPES, PATHS, Workload, count_model, parse_variant

DEFAULT_MODELS = ("dfformer_s18", "cdfformer_s18", "gfformer_s18", "convformer_s18", "caformer_s18")
CPU_ALLOCATORS = ("system", "retain")
"""How the timing workers' glibc malloc treats freed memory: ``system`` (its defaults, what
``tokenmix eval``/``predict`` and the official code run with) or ``retain``
(:func:`tokenmix.kernels.retain_freed_memory`, the ``train.cpu_allocator`` default). With
``system`` a large tensor freed and allocated again faults its pages in again on every step,
which costs a path that allocates more (the reference) far more than the fast one."""


@dataclass(frozen=True)
class SuiteConfig:
    """What ``tokenmix bench`` runs (see the CLI for the meaning of each option)."""

    models: Sequence[str] = DEFAULT_MODELS
    resolutions: Sequence[int] = (224,)
    batch: int = 8
    train: bool = False
    dtype: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    device: str = "cpu"
    paths: Sequence[str] = PATHS
    warmup: int = 3
    repeats: int = 10
    memory: bool = True
    memory_iterations: int = 2
    threads: int | None = None
    memory_limit_gb: float | None = None
    timeout_s: float = 3600.0
    cpu_allocator: str = "system"

    def __post_init__(self) -> None:
        if self.cpu_allocator not in CPU_ALLOCATORS:
            raise ValueError(
                f"cpu_allocator must be one of {CPU_ALLOCATORS}, got {self.cpu_allocator!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not self.paths or len(set(self.paths)) != len(self.paths):
            raise ValueError(f"paths must be distinct and non-empty, got {self.paths}")
        dtypes = {parse_variant(v, self.dtype)[1] for v in self.paths}  # validates every variant
        if "fp16" in dtypes and not self.device.startswith("cuda"):
            raise ValueError("fp16 autocast is benchmarked on CUDA only; use bf16 on CPU")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available")

    def workload(self, model: str, resolution: int) -> Workload:
        return Workload(
            model,
            resolution,
            self.batch,
            self.train,
            self.dtype,
            self.compile,
            self.channels_last,
            self.device,
        )


@dataclass
class BenchRow:
    """One (model, resolution, path) result; time and memory fields are None when not measured.

    ``path`` is a variant (``fast``, ``reference``, ``fast@bf16``, ...); the ratios compare it
    with the ``reference`` variant of the same run.
    """

    model: str
    resolution: int
    path: str
    status: str
    params_m: float
    gmacs: float
    batch: int
    throughput: float | None = None
    latency_ms: float | None = None
    latency_q1_ms: float | None = None
    latency_q3_ms: float | None = None
    peak_memory_mb: float | None = None
    gflops_per_s: float | None = None
    matmul_peak_share: float | None = None
    speedup_vs_reference: float | None = None
    memory_vs_reference: float | None = None
    error: str | None = None


@dataclass
class SuiteResult:
    config: SuiteConfig
    machine: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)


def machine_info(config: SuiteConfig) -> dict[str, Any]:
    """Where the numbers come from: hardware, software, threads and how busy the machine was."""
    from .. import kernels

    caps = kernels.detect()
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": caps.cpu_model,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": config.threads or torch.get_num_threads(),
        "cpu_capability": caps.cpu_capability,
        "cpu_native_bf16": caps.cpu_native_bf16,
        "kernels": caps.as_dict(),
        "kernel_thresholds": {**kernels.thresholds(caps), "cpu_class": caps.cpu_class},
        "load_average_start": list(os.getloadavg()),
        "cpu_allocator": config.cpu_allocator if config.device == "cpu" else None,
    }
    if config.device.startswith("cuda"):
        device = torch.device(config.device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# glibc adapts its mmap threshold to the sizes freed so far, so whether a freed tensor leaves
# the resident set depends on the history, and CPU peak RSS varies by +-15 % between identical
# runs. A fixed threshold makes every large allocation its own mapping, returned on free: the
# peak is then the peak of live memory (repeatable to ~0.1 %). Memory workers only.
_MEMORY_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _run_worker(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tokenmix.bench.worker", json.dumps(job)]
    env = {**os.environ, **_MEMORY_WORKER_ENV} if job["kind"] == "memory" else None
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"worker exceeded {timeout_s:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    if proc.returncode in (-9, 137):  # SIGKILL: the kernel's OOM killer
        return {"status": "oom", "error": "worker killed (SIGKILL), most likely out of memory"}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"status": "error", "error": f"worker exit {proc.returncode}: " + " | ".join(tail)}


def _memory_limit_bytes(config: SuiteConfig) -> int | None:
    if config.device != "cpu":
        return None
    if config.memory_limit_gb is not None:
        return int(config.memory_limit_gb * 2**30)
    try:  # default: 80 % of what is available now, so a shared machine keeps working
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(int(line.split()[1]) * 1024 * 0.8)
    except OSError:
        pass
    return None


def measure_peak(config: SuiteConfig) -> dict[str, float]:
    """Matrix-product GFLOP/s of this machine (best kernels), in a worker."""
    job = {"kind": "peak", "device": config.device, "threads": config.threads}
    result = _run_worker(job, config.timeout_s)
    return result.get("gflops", {}) if result.get("status") == "ok" else {}


def run_suite(config: SuiteConfig, progress: bool = True) -> SuiteResult:
    """Measure every (model, resolution, path) of ``config``; see the module docstring."""
    result = SuiteResult(config, machine_info(config))
    result.machine["matmul_peak_gflops"] = measure_peak(config)
    common = {"threads": config.threads, "memory_limit": _memory_limit_bytes(config)}
    cases = [(m, r) for m in config.models for r in config.resolutions]
    for model, res in tqdm(cases, desc="bench", disable=not progress):
        workload = config.workload(model, res)
        params, macs = count_model(model, res)
        rows = {
            path: BenchRow(model, res, path, "ok", params / 1e6, macs / 1e9, config.batch)
            for path in config.paths
        }
        if config.memory:
            for path, row in rows.items():
                job = {
                    "kind": "memory",
                    "workload": workload.to_dict(),
                    "path": path,
                    "iterations": config.memory_iterations,
                    **common,
                }
                out = _run_worker(job, config.timeout_s)
                if out["status"] == "ok":
                    row.peak_memory_mb = out["peak_bytes"] / 2**20
                else:
                    row.status, row.error = out["status"], out.get("error")
        runnable = [p for p, row in rows.items() if row.status == "ok"]
        if runnable:
            job = {
                "kind": "time",
                "workload": workload.to_dict(),
                "paths": runnable,
                "warmup": config.warmup,
                "repeats": config.repeats,
                "cpu_allocator": config.cpu_allocator,
                **common,
            }
            out = _run_worker(job, config.timeout_s)
            if "malloc" in out:
                result.machine["malloc"] = out["malloc"]  # what the timing worker really ran
            for path in runnable:
                row = rows[path]
                if out["status"] != "ok":
                    row.status, row.error = out["status"], out.get("error")
                    continue
                t = out["timings"][path]
                row.latency_ms = t["median"] * 1e3
                row.latency_q1_ms, row.latency_q3_ms = t["q1"] * 1e3, t["q3"] * 1e3
                row.throughput = config.batch / t["median"]
                passes = 3 if config.train else 1  # backward costs about twice the forward
                row.gflops_per_s = 2 * macs * config.batch * passes / t["median"] / 1e9
                peak = matmul_peak(
                    result.machine, computed_dtype(parse_variant(path, config.dtype)[1], config.device)
                )
                if peak:
                    row.matmul_peak_share = row.gflops_per_s / peak
        _add_ratios(rows)
        result.rows.extend(rows.values())
    result.machine["load_average_end"] = list(os.getloadavg())
    return result


def _add_ratios(rows: dict[str, BenchRow]) -> None:
    ref = rows.get("reference")
    if ref is None or ref.status != "ok":
        return
    for row in rows.values():
        if row.status != "ok":
            continue
        if row.throughput and ref.throughput:
            row.speedup_vs_reference = row.throughput / ref.throughput
        if row.peak_memory_mb is not None and ref.peak_memory_mb:
            row.memory_vs_reference = row.peak_memory_mb / ref.peak_memory_mb


# --- output ---------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(result: SuiteResult) -> str:
    """A fixed-width table of every row, with achieved GFLOP/s as a share of the matmul peak."""
    head = (
        f"{'model':<16} {'res':>5} {'path':<14} {'img/s':>8} {'ms/batch':>9} {'peak MB':>9} "
        f"{'GMACs':>7} {'GFLOP/s':>8} {'%peak':>6} {'speedup':>8} {'mem x':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in result.rows:
        if r.status != "ok":
            lines.append(
                f"{r.model:<16} {r.resolution:>5} {r.path:<14} {r.status.upper():>8}  "
                f"{(r.error or '')[:60]}"
            )
            continue
        share = r.matmul_peak_share * 100 if r.matmul_peak_share is not None else None
        lines.append(
            f"{r.model:<16} {r.resolution:>5} {r.path:<14} {_fmt(r.throughput, '8.2f')} "
            f"{_fmt(r.latency_ms, '9.1f')} {_fmt(r.peak_memory_mb, '9.0f')} {r.gmacs:7.2f} "
            f"{_fmt(r.gflops_per_s, '8.1f')} {_fmt(share, '6.1f')} "
            f"{_fmt(r.speedup_vs_reference, '8.2f')} {_fmt(r.memory_vs_reference, '6.2f')}"
        )
    peaks = ", ".join(
        f"{k} {v:.0f}" for k, v in result.machine.get("matmul_peak_gflops", {}).items()
    )
    if peaks:
        lines.append(
            f"%peak: achieved GFLOP/s over the best measured matmul of that dtype ({peaks})"
        )
    return "\n".join(lines)


def computed_dtype(request: str, device: str) -> str:
    """The dtype a request really computes in: ``auto`` and ``bf16`` are float32 where the
    device has no bf16 units (:func:`tokenmix.kernels.resolve_amp`), so their share of the peak
    must be taken against the float32 peak, not against the emulated bf16 one."""
    from .. import kernels

    if request in ("auto", "bf16"):
        return "bf16" if kernels.native_bf16(device) else "fp32"
    return request


def matmul_peak(machine: dict[str, Any], dtype: str) -> float | None:
    """The best measured matrix-product GFLOP/s in ``dtype`` (any kernel), if measured."""
    gflops = machine.get("matmul_peak_gflops", {})
    best = [v for k, v in gflops.items() if k.startswith(dtype + "_")]
    return max(best) if best else None


def default_name(config: SuiteConfig) -> str:
    mode = "train" if config.train else "infer"
    extras = "".join(
        s for s, on in (("-compile", config.compile), ("-cl", config.channels_last)) if on
    )
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    device = config.device.replace(":", "")
    return f"{device}-{mode}-{config.dtype}-b{config.batch}{extras}-{stamp}"


def write_results(result: SuiteResult, out_dir: Path, name: str, plot: bool = True) -> list[Path]:
    """Write ``<name>.json`` and ``<name>.csv`` (and the plots) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = asdict(result.config)
    config["models"], config["resolutions"] = list(config["models"]), list(config["resolutions"])
    config["paths"] = list(config["paths"])
    rows = [asdict(r) for r in result.rows]
    json_path = out_dir / f"{name}.json"
    json_path.write_text(
        json.dumps({"config": config, "machine": result.machine, "rows": rows}, indent=1) + "\n"
    )
    csv_path = out_dir / f"{name}.csv"
    with csv_path.open("w", newline="") as f:
        meta = result.machine
        f.write(
            f"# {meta['date']} {meta['cpu']} torch {meta['torch']} threads {meta['threads']} "
            f"load {meta['load_average_start'][0]:.2f}->{meta.get('load_average_end', [0])[0]:.2f}\n"
        )
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["model"])
        writer.writeheader()
        writer.writerows(rows)
    written = [json_path, csv_path]
    if plot and result.rows:
        from .plots import plot_results

        written += plot_results(result, out_dir / name)
    return written


def load_results(path: Path) -> SuiteResult:
    """Read a JSON file written by :func:`write_results` (e.g. to re-plot or compare)."""
    data = json.loads(Path(path).read_text())
    config = SuiteConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in data["config"].items()}
    )
    return SuiteResult(config, data["machine"], [BenchRow(**r) for r in data["rows"]])
