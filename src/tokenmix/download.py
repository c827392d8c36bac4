"""The one HTTP downloader of the package: weights (:mod:`tokenmix.models.hub`) and datasets.

:func:`download_file` fetches a URL into ``<dest>.part`` in the destination folder, verifies
it, and only then renames it over ``dest`` (atomic on one filesystem), so ``dest`` is either
the complete, verified file or untouched. On the way:

- **Resume without splicing.** The first response's validator (a strong ``ETag``, else
  ``Last-Modified``) and size are recorded in ``<dest>.part.json``. A later attempt (after a
  dropped connection, or in a later run) resumes the ``.part`` with ``Range`` *and* ``If-Range``
  carrying that validator, and keeps the 206 only when its ``Content-Range`` starts at the
  ``.part``'s size and its total is the recorded (or expected) size. Anything else, a 200, a
  416, a changed ETag, or a ``.part`` without a recorded validator, starts again from zero.
- **No silent truncation.** The result must have the expected size (the caller's ``size``,
  else the size the server announced); a body that ends early without any announced size is
  only accepted when a checksum vouches for it or the caller's ``verify`` accepts it.
- **Checksums.** ``sha256`` / ``md5`` are checked before the rename; a mismatch deletes the
  ``.part`` and raises :class:`ChecksumError` naming both digests.
- **Failures.** Connection drops and 5xx/408/429 answers are retried ``attempts`` times with
  doubling delays, each resuming where it stopped. Other HTTP errors, a name-resolution
  failure (no network: :class:`OfflineError`, raised at once) and a folder that cannot be
  written (:class:`FolderError`, raised before any request) are not retried.
- **Locking.** A lock file ``<dest>.lock`` keeps processes sharing a folder (one per GPU) from
  writing the same file at once; it is removed when released.
- ``TOKENMIX_OFFLINE=1`` forbids every request (:class:`OfflineError`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tokenmix.utils import atomic_write, file_digest, sha256_file

try:
    import fcntl
except ImportError:  # Windows: filelock's lock, which removes its file itself
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ENV_OFFLINE",
    "ChecksumError",
    "DownloadError",
    "Downloaded",
    "FolderError",
    "OfflineError",
    "download_file",
    "download_url",
    "file_digest",
    "file_lock",
    "is_offline",
    "prepare_folder",
    "sha256_file",
]

log = logging.getLogger("tokenmix")

ENV_OFFLINE = "TOKENMIX_OFFLINE"

ATTEMPTS = 5  # tries per download; each one resumes where the previous one stopped
RETRY_DELAY_S = 1.0  # doubled after each failed attempt
TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_USER_AGENT = "tokenmix/0.1 (+python-urllib)"
_PROGRESS_DELAY_S = 1.0  # the bar appears only once a download has taken this long


class DownloadError(RuntimeError):
    """A download that failed, or a file that could not be verified; nothing was written."""


class ChecksumError(DownloadError):
    """A file whose size or digest differs from the expected one."""

    def __init__(
        self,
        message: str,
        *,
        algorithm: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message)
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


class OfflineError(DownloadError):
    """No network: offline mode is set, or the host name cannot be resolved."""


class FolderError(DownloadError):
    """The destination folder is missing and cannot be created, or cannot be written."""


@dataclass(frozen=True)
class Downloaded:
    """A verified file now at ``path``."""

    path: Path
    num_bytes: int
    sha256: str


def is_offline() -> bool:
    """``TOKENMIX_OFFLINE`` is set to 1/true/yes/on."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in {"1", "true", "yes", "on"}


# --- folder and lock ---------------------------------------------------------------------------
def prepare_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be created in it.

    Raises:
        FolderError: naming the folder, at once (nothing here is worth retrying).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FolderError(
            f"cannot create the folder {folder} ({e.strerror or e}); create it, or choose "
            "another location"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".tokenmix-write-test-", dir=folder)
    except OSError as e:
        raise FolderError(
            f"the folder {folder} is not writable ({e.strerror or e}); make it writable, or "
            "choose another location"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return folder


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold ``<path>.lock`` exclusively (blocking); the lock file is removed on release.

    The holder deletes the file *before* unlocking, and a waiter that then gets the lock checks
    that its file is still the one at that path (else it locks the new one), so deleting the
    file never lets two processes in at once.
    """
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    if fcntl is None:
        from filelock import FileLock

        with FileLock(str(lock_path)):
            yield
        return
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("%s: waiting for another process to finish it", path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                now = os.stat(lock_path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)  # the previous holder removed this file: lock the current one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


# --- public API --------------------------------------------------------------------------------
def download_url(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = TIMEOUT_S,
    progress: bool = True,
) -> Path:
    """``dest`` after fetching ``url`` into it, unless it is already there with the checksum.

    Without a checksum the file is fetched every time (nothing could vouch for a present one).

    Raises:
        DownloadError: see :func:`download_file`.
    """
    dest = Path(dest)
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)

    def present() -> bool:
        return (
            bool(expected) and dest.is_file() and file_digest(dest, algorithm) == expected.lower()
        )

    if present():
        return dest
    prepare_folder(dest.parent)
    with file_lock(dest):
        if present():  # another process fetched it while we waited
            return dest
        download_file(
            url, dest, md5=md5, sha256=sha256, size=size, timeout=timeout, progress=progress,
            lock=False,
        )  # fmt: skip
    return dest


def download_file(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    verify: Callable[[Path], object] | None = None,
    progress: bool = True,
    desc: str | None = None,
    timeout: float = TIMEOUT_S,
    attempts: int = ATTEMPTS,
    retry_delay: float = RETRY_DELAY_S,
    lock: bool = True,
) -> Downloaded:
    """Fetch ``url`` to ``dest`` (resuming ``<dest>.part``), verify it, move it into place.

    Args:
        sha256, md5: expected digests (hex); checked before ``dest`` is written.
        size: expected size in bytes (e.g. a published one); else the server's is used.
        verify: called with the ``.part`` path when neither a size nor a checksum is known
            (the server sent no ``Content-Length``); raising rejects the file. Without it such
            a download is an error, since a connection that ended early looks complete.
        progress: show a tqdm bar on downloads that take more than a second.
        desc: the bar's label (default: the file name).
        timeout: seconds without data before a connection counts as dropped.
        attempts, retry_delay: tries in all, and the delay before the second (then doubled).
        lock: take ``<dest>.lock``; pass ``False`` when the caller already holds it.

    Raises:
        OfflineError: offline mode, or the host name cannot be resolved (not retried).
        FolderError: the folder of ``dest`` cannot be created or written (before any request).
        ChecksumError: wrong size or digest, or ``verify`` refused the file.
        DownloadError: an HTTP error, or the attempts ran out (the ``.part`` is kept).
    """
    dest = Path(dest)
    if is_offline():
        raise OfflineError(f"{ENV_OFFLINE} is set, so {url} was not fetched")
    prepare_folder(dest.parent)
    with file_lock(dest) if lock else contextlib.nullcontext():
        job = _Job(url, dest, size, progress, desc or dest.name, timeout)
        job.run(attempts, retry_delay)
        return job.commit(sha256=sha256, md5=md5, verify=verify)


# --- the transfer ------------------------------------------------------------------------------
class _Restart(Exception):
    """The ``.part`` cannot be continued: drop it and ask for the whole file."""


@dataclass
class _Job:
    url: str
    dest: Path
    size: int | None
    progress: bool
    desc: str
    timeout: float

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")

    @property
    def record_path(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part.json")

    def run(self, attempts: int, retry_delay: float) -> None:
        last_error: BaseException | None = None
        for attempt in range(max(1, attempts)):
            if attempt:
                delay = retry_delay * 2 ** (attempt - 1)
                log.warning(
                    "%s: download interrupted (%s); resuming in %.0f s (attempt %d/%d)",
                    self.url, _describe(last_error), delay, attempt + 1, attempts,
                )  # fmt: skip
                time.sleep(delay)
            try:
                try:
                    self._fetch()
                except _Restart as why:
                    log.warning("%s: %s; downloading it from the start", self.url, why)
                    self.discard()
                    self._fetch()
                return
            except urllib.error.HTTPError as e:
                if e.code < 500 and e.code not in (408, 429):
                    raise DownloadError(f"{self.url} answered HTTP {e.code} {e.reason}") from e
                last_error = e
            except urllib.error.URLError as e:
                if _name_not_resolved(e.reason):
                    host = urllib.parse.urlsplit(self.url).hostname
                    raise OfflineError(
                        f"could not download {self.url}: the host name {host!r} cannot be "
                        f"resolved ({e.reason}). Is this machine offline? Check the network "
                        f"or proxy, or set {ENV_OFFLINE}=1 to use only files already present."
                    ) from None
                last_error = e
            except (http.client.HTTPException, OSError) as e:  # drops, resets, timeouts
                last_error = e
        kept = self.part.stat().st_size if self.part.is_file() else 0
        where = f"; {kept} bytes kept in {self.part} to resume from next time" if kept else ""
        raise DownloadError(
            f"could not download {self.url} ({_describe(last_error)}){where}"
        ) from last_error

    def _fetch(self) -> None:
        """One request, appended to the ``.part`` when it can be resumed safely."""
        record = self._read_record()
        offset = self.part.stat().st_size if self.part.is_file() else 0
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            validator = _validator(record)
            if validator is None:
                raise _Restart(f"{self.part} has no recorded ETag or Last-Modified to resume by")
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = validator
        try:
            response = urllib.request.urlopen(
                urllib.request.Request(self.url, headers=headers), timeout=self.timeout
            )
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:
                e.close()
                raise _Restart(f"the server cannot resume at byte {offset}") from None
            raise
        with response:
            length = _int(response.headers.get("Content-Length"))
            if offset and response.status == 206:
                total = self._check_resume(response, offset, record)
            else:  # a fresh download (a 200 to a Range request: the file changed or no ranges)
                if offset:
                    log.info("%s: the server sent the whole file; starting over", self.url)
                offset = 0
                total = length
                record = {
                    "url": self.url,
                    "etag": response.headers.get("ETag"),
                    "last_modified": response.headers.get("Last-Modified"),
                    "total": total,
                }
                self._write_record(record)
            received = self._stream(response, offset, total)
        if length is not None and received < length:
            raise http.client.IncompleteRead(b"", length - received)

    def _check_resume(self, response: Any, offset: int, record: dict[str, Any] | None) -> int:
        """The file's total size from a 206 that continues the ``.part``, else :class:`_Restart`."""
        value = response.headers.get("Content-Range", "")
        try:
            unit, spec = value.split(None, 1)
            span, total_s = spec.split("/")
            start = int(span.split("-")[0])
            total = int(total_s)
        except ValueError:
            raise _Restart(f"unusable Content-Range {value!r} when resuming") from None
        expected = (record or {}).get("total") or self.size
        etag, recorded_etag = response.headers.get("ETag"), (record or {}).get("etag")
        if unit != "bytes" or start != offset:
            raise _Restart(f"asked to resume at byte {offset}, the server sent {value!r}")
        if expected is not None and total != expected:
            raise _Restart(f"the file is now {total} bytes, not the {expected} first seen")
        if etag and recorded_etag and etag != recorded_etag:
            raise _Restart(f"the file changed (ETag {etag}, was {recorded_etag})")
        if record is not None and record.get("total") is None:
            self._write_record({**record, "total": total})
        return total

    def _stream(self, response: Any, offset: int, total: int | None) -> int:
        try:
            f = open(self.part, "ab" if offset else "wb")  # noqa: SIM115 (closed below)
        except OSError as e:
            raise DownloadError(f"cannot write {self.part}: {e}") from e
        bar = tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=self.desc, disable=not self.progress, leave=False, delay=_PROGRESS_DELAY_S,
        )  # fmt: skip
        received = 0
        with f, bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                try:
                    f.write(chunk)
                except OSError as e:  # disk full: retrying will not help
                    raise DownloadError(f"cannot write {self.part}: {e}") from e
                received += len(chunk)
                bar.update(len(chunk))
        return received

    def commit(
        self,
        *,
        sha256: str | None,
        md5: str | None,
        verify: Callable[[Path], object] | None,
    ) -> Downloaded:
        """Check the ``.part`` against every expectation, then rename it to ``dest``."""
        num_bytes = self.part.stat().st_size
        announced = (self._read_record() or {}).get("total")
        for expected in (self.size, announced):
            if expected is not None and num_bytes != expected:
                self.discard()
                raise ChecksumError(f"{self.url}: got {num_bytes} bytes, expected {expected}")
        digest = sha256_file(self.part)
        for algorithm, expected, actual in (
            ("sha256", sha256, lambda: digest),
            ("md5", md5, lambda: file_digest(self.part, "md5")),
        ):
            if expected and (got := actual()) != expected.lower():
                self.discard()
                raise ChecksumError(
                    f"{algorithm} mismatch for {self.url}: expected {expected.lower()}, got "
                    f"{got}; the partial file was deleted and {self.dest} was not written",
                    algorithm=algorithm,
                    expected=expected.lower(),
                    actual=got,
                )
        if self.size is None and announced is None and not (sha256 or md5):
            if verify is None:
                self.discard()
                raise ChecksumError(
                    f"{self.url}: the server sent no size and no checksum is known, so a "
                    f"transfer that ended early cannot be told from a complete one; {self.dest} "
                    "was not written (pass sha256=, md5= or size=)"
                )
            try:
                verify(self.part)
            except Exception as e:
                self.discard()
                raise ChecksumError(
                    f"{self.url}: the server sent no size and the file received "
                    f"({num_bytes} bytes) does not load, so it is probably truncated; "
                    f"{self.dest} was not written ({e})"
                ) from e
        os.replace(self.part, self.dest)
        self.record_path.unlink(missing_ok=True)
        return Downloaded(self.dest, num_bytes, digest)

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.record_path.unlink(missing_ok=True)

    def _read_record(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("url") != self.url:
            return None
        return record

    def _write_record(self, record: dict[str, Any]) -> None:
        text = json.dumps(record, indent=2) + "\n"
        try:
            atomic_write(self.record_path, lambda tmp: tmp.write_text(text))
        except OSError as e:
            raise DownloadError(f"cannot write {self.record_path}: {e}") from e


def _validator(record: dict[str, Any] | None) -> str | None:
    """What ``If-Range`` may carry: a strong ETag, else the Last-Modified date."""
    if not record:
        return None
    etag = record.get("etag")
    if etag and not str(etag).startswith("W/"):
        return str(etag)
    return record.get("last_modified") or None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _name_not_resolved(reason: object) -> bool:
    """A DNS failure (no network, or no such host): retrying in seconds will not fix it."""
    return isinstance(reason, socket.gaierror)


def _describe(e: BaseException | None) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return str(e.reason)
    return f"{type(e).__name__}: {e}" if e is not None else "unknown error"
