"""One training process per run folder: an exclusive lock held for the run's whole life.

Two runs writing one folder mix silently: ``metrics.jsonl`` gets each step twice, the
checkpoints of both runs interleave and one of them dies on the other's half-renamed
``state.pt``. :class:`RunLock` takes ``fcntl.flock`` on ``RUN/.train.lock`` and writes the
holder's PID (and host) into it, so a second run stops at once with an error naming the
holder. The kernel drops a ``flock`` when its process ends, however it ends, so a run killed
with SIGKILL leaves no stale lock behind: the next run takes the lock and overwrites the PID.

``flock`` is advisory and per open file: it protects against other tokenmix runs (and
against a second run started from the same Python process), not against other programs.
Where ``fcntl`` does not exist (Windows) the lock is a no-op. On network file systems that
do not support ``flock`` the error says so instead of silently not locking.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".train.lock"


class RunFolderError(RuntimeError):
    """The run folder cannot be used: in use by another run, or not writable."""


class RunLockedError(RunFolderError):
    """Another live process holds the run folder's lock."""


def describe_os_error(e: BaseException) -> str:
    """A short lower-case cause for an OS error (``no space left on device``, ...)."""
    code = getattr(e, "errno", None)
    if code:
        return os.strerror(code).lower()
    return "the write failed"


class RunLock:
    """Hold ``RUN/.train.lock`` exclusively from ``__enter__`` to ``__exit__``.

    Args:
        run_dir: the run folder; created when missing.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLockedError` naming the holder's PID."""
        if fcntl is None:  # pragma: no cover - not POSIX
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # O_RDWR without O_TRUNC: the holder's PID stays readable until we own the lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFolderError(
                f"cannot write to the run folder {self.run_dir}: {describe_os_error(e)} ({e}); "
                "make it writable or pick another folder with --set run.output_dir=DIR"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError(
                    f"cannot lock the run folder {self.run_dir} ({e}); its file system may not "
                    "support flock"
                ) from e
            raise RunLockedError(
                f"{self.run_dir} is in use by another training run ({holder}); two runs in one "
                "folder would mix their metrics and checkpoints. Wait for it to finish, stop it, "
                "or pick another folder with --set run.name=NAME"
            ) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: deleting it would race with a run about to lock it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """``PID 123 on host h`` from the lock file, or a note that it is not yet written."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return "PID not yet recorded"
    host = record.get("host")
    return f"PID {pid}" + (f" on host {host}" if host and host != socket.gethostname() else "")
