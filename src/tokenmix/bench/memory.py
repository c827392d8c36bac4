"""Peak memory of a piece of work: CUDA allocator peak, or CPU resident-set growth.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
allocated before (model and inputs), i.e. the activations, workspaces and gradients the work
itself needs.

CPU: PyTorch's CPU allocator keeps no statistics, so we read the kernel's: the peak resident
set size (``VmHWM``) minus the resident size before the work. Linux lets a process reset its
own peak (``echo 5 > /proc/self/clear_refs``), so the peak belongs to the measured work only;
where that is not possible we fall back to ``getrusage`` (peak over the process lifetime). Run
each measurement in a fresh process (``tokenmix.bench.worker`` does), so that freed-but-cached
memory of earlier work cannot hide growth; the suite also fixes glibc's mmap threshold in
memory workers, so that freed tensors leave the resident set at once and the peak is that of
live memory rather than of the allocator's caching history (see ``suite._MEMORY_WORKER_ENV``).

:func:`limit_cpu_memory` caps the address space, so that a size that does not fit fails with
an allocation error (reported as out of memory) instead of waking the kernel's OOM killer on a
shared machine.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def cpu_peak_rss_growth(fn: Callable[[], object]) -> int:
    """Bytes by which the peak resident set size during ``fn()`` exceeds the size before it."""
    before = _status_kib("VmRSS")
    if before is not None and _reset_peak_rss():
        fn()
        peak = _status_kib("VmHWM")
        if peak is not None:
            return max(peak - before, 0) * 1024
    # Fallback: lifetime peak (ru_maxrss is in KiB on Linux); exact in a fresh process as
    # long as setting up the work peaked lower than running it.
    before_kib = (
        before if before is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    )
    fn()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(peak_kib - before_kib, 0) * 1024


def cuda_peak_growth(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes by which ``max_memory_allocated`` during ``fn()`` exceeds the allocation before it."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return max(torch.cuda.max_memory_allocated(device) - before, 0)


def peak_memory_growth(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory growth of ``fn()`` on ``device`` (see the module docstring for how)."""
    if device.type == "cuda":
        return cuda_peak_growth(fn, device)
    if device.type == "cpu":
        return cpu_peak_rss_growth(fn)
    raise ValueError(f"peak memory is measured on cpu and cuda, not {device.type!r}")


def limit_cpu_memory(max_bytes: int) -> None:
    """Let this process map at most ``max_bytes`` more than it has mapped now.

    Allocations beyond the cap fail with ``RuntimeError`` ("can't allocate memory"), which
    :func:`is_out_of_memory` recognises.
    """
    size_kib = _status_kib("VmSize")
    if size_kib is None:
        return
    limit = size_kib * 1024 + int(max_bytes)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CUDA or CPU), not a bug."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "bad_alloc" in text
    )
