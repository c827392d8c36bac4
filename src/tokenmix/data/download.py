"""Download a file with checksum verification and an atomic rename; CIFAR-10 from its official URL.

A download either leaves the complete, verified file at its destination or leaves nothing there:
bytes stream into ``<dest>.part`` in the same folder while being hashed, and only a matching
checksum renames it into place (``os.replace`` is atomic on one filesystem). A mismatch deletes
the partial file and raises :class:`DownloadError` naming the URL and both digests. There is no
resume: the archives involved are small enough to fetch again.

The CIFAR-10 location can be redirected (a mirror, or a local server in tests) with the ``url``
argument of :func:`download_cifar10` or the ``TOKENMIX_CIFAR10_URL`` environment variable.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from tqdm import tqdm

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed or did not match its checksum."""


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks (``algorithm``: ``"md5"``, ``"sha256"``, ...)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_url(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch ``url`` to ``dest`` and verify it; returns ``dest``.

    An existing ``dest`` with the right checksum is kept without downloading. With no checksum
    given the file is still written atomically, but nothing vouches for its content.

    Raises:
        DownloadError: network failure, or a checksum mismatch (nothing is left at ``dest``).
    """
    dest = Path(dest)
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)
    if dest.exists() and expected and file_digest(dest, algorithm) == expected.lower():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.new(algorithm)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
    except OSError as err:  # URLError, HTTPError and socket timeouts are OSErrors
        part.unlink(missing_ok=True)
        raise DownloadError(f"downloading {url} to {dest} failed: {err}") from err
    got = h.hexdigest()
    if expected and got != expected.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{algorithm} mismatch for {url}: expected {expected.lower()}, got {got}; "
            f"the partial file was deleted and {dest} was not written"
        )
    os.replace(part, dest)
    return dest


def download_cifar10(
    dest: str | Path,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Make sure the CIFAR-10 python archive exists at ``dest`` (a file path or a folder).

    Args:
        dest: the archive path, or a folder to hold ``cifar-10-python.tar.gz``.
        url: where to fetch it; defaults to ``$TOKENMIX_CIFAR10_URL`` or the official URL.
        md5: expected checksum; defaults to the official archive's (:data:`CIFAR10_MD5`), so a
            mirror must serve the identical file.
        progress: show a tqdm bar.
    """
    dest = Path(dest)
    if dest.is_dir() or not dest.name.endswith((".tar.gz", ".tgz")):
        dest = dest / CIFAR10_ARCHIVE
    source = url or os.environ.get("TOKENMIX_CIFAR10_URL") or CIFAR10_URL
    return download_url(source, dest, md5=md5 or CIFAR10_MD5, progress=progress)
