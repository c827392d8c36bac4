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
name and renamed into place in one step, and an old one is renamed away before it is deleted,
so a kill leaves either the old set of complete checkpoints or the new one, never a
half-written or half-deleted one that ``--resume`` would trip on. What a kill can leave is
hidden leftovers (``.tmp_step_*``, ``.del_step_*``, ``.*.tmp``), which
:func:`remove_leftovers` deletes when the next run in the folder starts.

A write that fails (disk full, read-only folder) raises :class:`CheckpointWriteError` naming
the folder, the cause and the newest checkpoint that is still intact, after removing its
partial files so they do not keep the space. A checkpoint damaged on disk afterwards (a
truncated file) is a :class:`~tokenmix.models.checkpoint.CheckpointError` naming the file;
:func:`newest_intact_checkpoint` is what ``--resume`` uses to fall back past such a one.

Random state is not a snapshot here: the training loop reseeds every generator from
``(seed, step, rank)`` at each step (see :func:`tokenmix.engine.train.seed_step`), so the
counters in ``state.pt`` determine the whole random stream on any number of processes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tokenmix.models.checkpoint import CheckpointError, check_torch_file
from tokenmix.utils import atomic_write
from tokenmix.utils import fsync_path as _fsync

log = logging.getLogger("tokenmix")

STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_FILE, EMA_FILE, STATE_FILE, BEST_FILE = (
    "model.safetensors",
    "ema.safetensors",
    "state.pt",
    "best.safetensors",
)
# hidden names a kill can leave in the checkpoints folder (see remove_leftovers)
_LEFTOVER = re.compile(r"^\.(tmp_step_\d+|del_step_\d+(_\d+)?|.+\.tmp)$")
# below this much free space an unexplained write failure is most likely a full disk
_LOW_SPACE = 64 << 20


class CheckpointWriteError(OSError, RuntimeError):
    """A checkpoint could not be written (disk full, read-only folder, I/O error).

    An ``OSError`` because that is what it is, and a ``RuntimeError`` so that the command
    line reports its message instead of a traceback. ``errno`` is the cause's, when known.
    """


def weights_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """Safetensors metadata must be ``str -> str``: non-strings are stored as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def save_weights(path: Path, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write a state_dict as safetensors, atomically, with ``meta`` in the header."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=weights_metadata(meta)))


def read_metadata(path: Path) -> dict[str, str]:
    """The header metadata of a safetensors file (config, model name, classes, step, metrics).

    A file that is not readable safetensors (truncated, not safetensors at all) is a
    :class:`CheckpointError` naming it.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


# --- failures while writing ------------------------------------------------------------------
def _errno_of(e: BaseException) -> int | None:
    """The OS error code behind ``e``: an ``OSError``'s, or the one safetensors' Rust writer
    prints (``Os { code: 28, kind: StorageFull, ... }``)."""
    code = getattr(e, "errno", None)
    if code:
        return code
    m = re.search(r"Os \{ code: (\d+)", str(e))
    return int(m.group(1)) if m else None


def _free_bytes(folder: Path) -> int | None:
    for where in (folder, *folder.parents):
        try:
            return shutil.disk_usage(where).free
        except OSError:
            continue
    return None


def write_failure(e: BaseException, what: str, folder: Path, intact: str) -> CheckpointWriteError:
    """A :class:`CheckpointWriteError` that names ``folder``, the cause and what is intact.

    torch's zip writer reports a full disk only as ``enforce fail at inline_container.cc``
    without an error code; then the free space decides whether to call it a full disk.
    """
    code = _errno_of(e)
    free = _free_bytes(folder)
    if code is not None:
        cause = os.strerror(code).lower()
    elif free is not None and free < _LOW_SPACE:
        cause = "no space left on device (most likely)"
    else:
        cause = "the write failed"
    where = f"{folder} ({free / 2**20:.0f} MiB free there)" if free is not None else f"{folder}"
    hint = {
        errno.ENOSPC: "Free some space (or lower checkpoint.keep_last), then continue with --resume.",
        errno.EDQUOT: "Free some space (disk quota), then continue with --resume.",
        errno.EACCES: "Make the folder writable, then continue with --resume.",
        errno.EROFS: "The file system is mounted read-only; continue with --resume once writable.",
    }.get(code or 0, "Fix the cause, then continue with --resume.")
    err = CheckpointWriteError(f"{cause} while writing {what} to {where}: {e}. {intact} {hint}")
    err.errno = code
    return err


@contextmanager
def _reported_as_write_failure(
    what: str, folder: Path, intact: Callable[[], str], cleanup: Callable[[], None]
) -> Iterator[None]:
    """Run a write; on failure call ``cleanup`` and raise a clear :class:`CheckpointWriteError`.

    Only I/O failures are converted (:func:`_is_write_error`); a bug in the state being
    saved (a ``TypeError``, say) stays what it is. Any exception, ``KeyboardInterrupt``
    included, still removes the partial files.
    """
    try:
        yield
    except BaseException as e:
        cleanup()
        if isinstance(e, CheckpointWriteError) or not _is_write_error(e):
            raise
        raise write_failure(e, what, folder, intact()) from e


def _is_write_error(e: BaseException) -> bool:
    """An I/O failure of a writer: an ``OSError``, safetensors' error, or torch's zip writer
    (a ``RuntimeError`` naming ``inline_container`` / ``PytorchStreamWriter``; other runtime
    errors, such as a CUDA fault while copying weights to the host, are not write failures)."""
    if isinstance(e, (OSError, SafetensorError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and (
        "inline_container" in text or "PytorchStreamWriter" in text
    )


def _intact_note(ckpt_dir: Path) -> str:
    previous = latest_checkpoint(ckpt_dir)
    if previous is None:
        return "The partial files were removed; there is no earlier checkpoint."
    return f"The partial files were removed; the previous checkpoint {previous.name} is intact."


def _remove_tree(path: Path, ckpt_dir: Path) -> None:
    """Delete a step directory so that a kill half-way leaves no half-deleted checkpoint:
    rename it to a hidden name first (one atomic step), then delete."""
    n = 0
    while True:
        aside = ckpt_dir / f".del_{path.name}" if n == 0 else ckpt_dir / f".del_{path.name}_{n}"
        if not aside.exists():
            break
        n += 1
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


# --- writing ---------------------------------------------------------------------------------
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

    Raises:
        CheckpointWriteError: the write failed (no space, no permission, I/O error); the
            partial ``.tmp_step_*`` folder is removed and earlier checkpoints are untouched.
    """
    final = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f".tmp_step_{step:08d}"
    with _reported_as_write_failure(
        f"checkpoint {final.name}",
        ckpt_dir,
        intact=lambda: _intact_note(ckpt_dir),
        cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True),
    ):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_weights(tmp / MODEL_FILE, model_state, meta)
        if ema_state is not None:
            save_weights(tmp / EMA_FILE, ema_state, {**meta, "ema": True})
        atomic_write(tmp / STATE_FILE, lambda p: torch.save(dict(train_state), p))
        if final.exists():  # only a damaged leftover can be here: resume moves later steps aside
            _remove_tree(final, ckpt_dir)
        os.replace(tmp, final)
        _fsync(ckpt_dir)
    for old in list_checkpoints(ckpt_dir)[:-keep_last]:
        _remove_tree(old, ckpt_dir)
    return final


def save_best(ckpt_dir: Path, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write ``best.safetensors`` atomically; a failure keeps the previous one and says so."""
    path = ckpt_dir / BEST_FILE
    with _reported_as_write_failure(
        f"the best weights {BEST_FILE}",
        ckpt_dir,
        intact=lambda: (
            f"The previous {BEST_FILE} is intact." if path.is_file() else f"No {BEST_FILE} yet."
        ),
        cleanup=lambda: None,  # atomic_write removed its temporary file
    ):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_weights(path, state, meta)
    return path


def remove_leftovers(ckpt_dir: Path) -> list[Path]:
    """Delete what killed writes left (``.tmp_step_*``, ``.del_step_*``, ``.*.tmp``).

    Only call this while holding the run's lock (:mod:`tokenmix.engine.runlock`): another
    live run's temporary folder looks the same.
    """
    if not ckpt_dir.is_dir():
        return []
    removed = []
    for p in sorted(ckpt_dir.iterdir()):
        if _LEFTOVER.match(p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# --- reading ---------------------------------------------------------------------------------
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
        check_torch_file(path)  # bounded: a crafted state.pt cannot expand without limit
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and EOF errors all mean the same thing here
        raise CheckpointError(f"{path}: cannot read the training state ({e})") from e


def load_checkpoint_weights(ckpt: Path, name: str = MODEL_FILE) -> dict[str, torch.Tensor]:
    """The tensors of ``ckpt/name``; a damaged file is a :class:`CheckpointError` naming it."""
    path = Path(ckpt) / name
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: {name} is missing")
    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def check_checkpoint(ckpt: Path) -> None:
    """Read every file of a step checkpoint in full; raise :class:`CheckpointError` naming
    the first damaged one. (Reading is the only check that catches a truncated tensor.)"""
    load_train_state(ckpt)
    load_checkpoint_weights(ckpt, MODEL_FILE)
    if (Path(ckpt) / EMA_FILE).exists():
        load_checkpoint_weights(ckpt, EMA_FILE)


def newest_intact_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest step checkpoint whose files all read back, warning about each newer one
    that does not (it stays on disk: resuming moves it aside, see
    :func:`tokenmix.engine.resume.move_later_aside`).

    Raises:
        CheckpointError: there are checkpoints but none is intact.
    """
    found = list_checkpoints(ckpt_dir)
    damaged: list[str] = []
    for path in reversed(found):
        try:
            check_checkpoint(path)
        except CheckpointError as e:
            log.warning("checkpoint %s is damaged: %s; falling back to the one before", path, e)
            damaged.append(str(e))
            continue
        return path
    if damaged:
        raise CheckpointError(f"no intact checkpoint in {ckpt_dir}: " + "; ".join(damaged))
    return None


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
