"""CIFAR-10 from its official URL, through the package's one downloader (:mod:`tokenmix.download`).

:func:`download_url` leaves either the complete, verified file at its destination or nothing:
bytes go to ``<dest>.part`` and only a matching checksum renames it into place; a mismatch
raises :class:`DownloadError` naming the URL and both digests.

The CIFAR-10 location can be redirected (a mirror, or a local server in tests) with the ``url``
argument of :func:`download_cifar10` or the ``TOKENMIX_CIFAR10_URL`` environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenmix.download import DownloadError, download_url
from tokenmix.utils import file_digest

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DownloadError",
    "download_cifar10",
    "download_url",
    "file_digest",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"


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
