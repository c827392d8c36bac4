"""Small helpers shared by every layer of the package (files, argument shapes).

They live here, below ``models``, ``data``, ``engine`` and ``viz``, so that none of those has to
import another only for a helper.
"""

from .boxes import cut_box
from .files import atomic_write, file_digest, fsync_path, sha256_file
from .shapes import to_2tuple

__all__ = ["atomic_write", "cut_box", "file_digest", "fsync_path", "sha256_file", "to_2tuple"]
