"""Run metrics: a JSON-lines file (the record ``tokenmix plot`` reads), TensorBoard, progress bars.

Only rank 0 writes. Each record is one line ``{"kind": "train"|"eval"|..., "step", "epoch",
...values, "time"}``, flushed as it is written, so a killed run keeps everything up to its
last line. On ``--resume`` the records after the checkpoint's step are dropped first: the
resumed run writes them again, and the file then reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .checkpoint import atomic_write

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics file (a torn last line from a kill is skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file: {path}")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsWriter:
    """Append metric records to ``RUN/metrics.jsonl`` and TensorBoard (``RUN/tb``).

    Args:
        run_dir: the run folder.
        enabled: False on ranks other than 0: every call is then a no-op.
        tensorboard: also write TensorBoard scalars.
        resume_step: when resuming, drop records logged after this step first.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(self.path, lambda p: p.write_text(text))
        self._file = self.path.open("a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)

    def write(self, kind: str, step: int, **values: Any) -> None:
        """Record ``values`` (numbers, or lists for per-class results) under ``kind``."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, **values, "time": round(time.time(), 3)}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if number and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def progress_bar(
    total: int, *, desc: str, initial: int = 0, enabled: bool = True, unit: str = "img"
) -> tqdm:
    """A tqdm bar counting images, so its rate is throughput and its ETA the epoch's end."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        unit_scale=True,
        dynamic_ncols=True,
        leave=False,
        disable=not enabled,
    )
