"""Keep freed CPU memory in the process: no page fault storm on every training step.

PyTorch's CPU allocator takes its tensors from the C library's ``malloc``. glibc serves blocks
above its mmap threshold (128 KiB, adapting up to 32 MiB) with fresh ``mmap`` calls and hands
freed heap tops back to the kernel, so a training loop that frees and re-allocates the same
activations every step touches new pages every step: 4-6 thousand minor faults per step for the
CIFAR-10 recipe's model here, each a trip through the kernel (and through the hypervisor in a
VM). Raising the mmap threshold to its maximum and switching trimming off keeps the memory in
the heap for the next step (the approach of the tcmalloc/jemalloc preload that PyTorch's CPU
performance guide recommends, without a preload).

This changes the whole process's ``malloc`` (it is a process-wide C library setting), so only
the training engine calls it, on CPU runs, and ``train.cpu_allocator: system`` leaves ``malloc``
alone. Memory stays at the run's peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20
"""glibc's largest accepted mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``)."""
TOP_PAD = 64 << 20
"""Extra heap grown at once, so a step's first allocations do not extend the heap piecemeal."""
TRIM_THRESHOLD = (1 << 31) - 1
"""Free memory at the heap top kept rather than returned (``int`` max: never trim)."""

_retained: str | None = None


def retain_freed_memory() -> str | None:
    """Set glibc ``malloc`` to keep freed memory (idempotent): a description of what was set,
    or None where the C library is not glibc (nothing changed) or refused a setting (a warning
    names it; the settings made before it stay, each works on its own)."""
    global _retained
    if _retained is not None:
        return _retained
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    settings = {
        "mmap threshold": (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        "top pad": (_M_TOP_PAD, TOP_PAD),
        "trim threshold": (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    }
    for name, (param, value) in settings.items():
        if libc.mallopt(param, value) != 1:
            log.warning("glibc mallopt refused the %s %d; malloc keeps its default", name, value)
            return None
    _retained = "glibc malloc keeps freed memory (mmap threshold 32 MiB, top pad 64 MiB, no trim)"
    return _retained
