"""Wall-clock timing that is fair to compare: device-synchronised, warmed up, interleaved.

On a shared or throttling machine the speed of a run drifts over minutes, so comparing two
implementations measured one after the other mixes the drift into the ratio. We interleave:
each repetition runs every candidate once, in turn, and the ratio of medians is taken over
repetitions that saw the same conditions.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU, where calls are synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call of ``fn``, synchronised before and after on accelerators."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


@dataclass(frozen=True)
class TimingSummary:
    """Robust statistics of repeated timings, in seconds."""

    median: float
    q1: float
    q3: float
    minimum: float
    repeats: int

    @classmethod
    def of(cls, times: list[float]) -> TimingSummary:
        if not times:
            raise ValueError("no timings to summarise")
        if len(times) >= 4:
            q1, _, q3 = statistics.quantiles(times, n=4)
        else:
            q1, q3 = min(times), max(times)
        return cls(statistics.median(times), q1, q3, min(times), len(times))


def interleaved_timings(
    candidates: Mapping[str, Callable[[], object]],
    device: torch.device,
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, TimingSummary]:
    """Time every candidate ``repeats`` times, round-robin, after ``warmup`` untimed calls each.

    Args:
        candidates: name -> zero-argument callable (e.g. one forward pass of a batch).
        device: where the work runs (for synchronisation).
        warmup: untimed calls per candidate first (allocator, kernel selection, autotuning).
        repeats: timed rounds; each round calls every candidate once, in a rotating order so
            that no candidate always follows the same one.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_call(candidates[name], device))
    return {name: TimingSummary.of(t) for name, t in times.items()}
