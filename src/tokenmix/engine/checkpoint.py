"""Training checkpoints that survive a crash at any instant.

Layout of ``RUN/checkpoints``::

    step_00001200/            one directory per saved step, complete or absent
        model.safetensors     weights (+ metadata: resolved config, model name, classes, step)
        ema.safetensors       EMA weights, when EMA is on
        state.pt              optimizer, scheduler, grad scaler, counters, sampler position
    best.safetensors          weights with the best monitored eval metric

Weights are safetensors (no code can run when they are read); ``state.pt`` holds only tensors
and plain containers and is read with ``torch.load(weights_only=True)``. Every file is written
to a temporary name, fsynced and renamed; a step directory is assembled under a temporary
name and renamed into place in one step, so a kill leaves either the old set of checkpoints or
the new one, never a half-written file that ``--resume`` would trip on.

Random state is not a snapshot here: the training loop reseeds every generator from
``(seed, step, rank)`` at each step (see :func:`tokenmix.engine.train.seed_step`), so the
counters in ``state.pt`` determine the whole random stream on any number of processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tokenmix.models.checkpoint import CheckpointError
from tokenmix.utils import atomic_write
from tokenmix.utils import fsync_path as _fsync

STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_FILE, EMA_FILE, STATE_FILE, BEST_FILE = (
    "model.safetensors",
    "ema.safetensors",
    "state.pt",
    "best.safetensors",
)


def weights_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """Safetensors metadata must be ``str -> str``: non-strings are stored as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def save_weights(path: Path, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write a state_dict as safetensors, atomically, with ``meta`` in the header."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=weights_metadata(meta)))


def read_metadata(path: Path) -> dict[str, str]:
    """The header metadata of a safetensors file (config, model name, classes, step, metrics)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    *,
    model_state: Mapping[str, torch.Tensor],
    train_state: Mapping[str, Any],
    meta: Mapping[str, Any],
    ema_state: Mapping[str, torch.Tensor] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write ``step_<step>/`` atomically, then delete all but the newest ``keep_last``.

    Args:
        ckpt_dir: the run's ``checkpoints`` folder.
        step: optimizer steps done; names the checkpoint.
        model_state: the model's state_dict (unwrapped: no ``module.`` prefix).
        train_state: everything else needed to continue: counters and the state dicts of the
            optimizer, scheduler and grad scaler (tensors and plain containers only).
        meta: stored in the weights' header so a weights file explains itself.
        ema_state: EMA weights, when EMA is on.
        keep_last: how many step checkpoints to keep.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f".tmp_step_{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(tmp / MODEL_FILE, model_state, meta)
    if ema_state is not None:
        save_weights(tmp / EMA_FILE, ema_state, {**meta, "ema": True})
    atomic_write(tmp / STATE_FILE, lambda p: torch.save(dict(train_state), p))
    if final.exists():  # re-saving a step after resuming from an earlier checkpoint
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(ckpt_dir)
    for old in list_checkpoints(ckpt_dir)[:-keep_last]:
        shutil.rmtree(old)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()]


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def load_train_state(ckpt: Path) -> dict[str, Any]:
    """Read ``state.pt`` safely; a damaged file is a :class:`CheckpointError` naming it."""
    path = Path(ckpt) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: not a training checkpoint (no {STATE_FILE})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and EOF errors all mean the same thing here
        raise CheckpointError(f"{path}: cannot read the training state ({e})") from e


def load_checkpoint_weights(ckpt: Path, name: str = MODEL_FILE) -> dict[str, torch.Tensor]:
    path = Path(ckpt) / name
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: {name} is missing")
    return dict(load_file(str(path)))


def resolve_weights(path: str | Path) -> Path:
    """A weights file from what a user may pass: the file, a step checkpoint or a run folder.

    A run folder resolves to its best weights, else its latest step checkpoint.
    """
    path = Path(path)
    if path.is_file():
        return path
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if (ckpt_dir / BEST_FILE).is_file():
        return ckpt_dir / BEST_FILE
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        return latest / MODEL_FILE
    raise FileNotFoundError(f"no checkpoint found at {path}")
