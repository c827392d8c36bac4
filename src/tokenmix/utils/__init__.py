"""Small helpers shared by every layer of the package (files, argument shapes, the one bounded
allow-list unpickler for untrusted pickles).

They live here, below ``models``, ``data``, ``engine`` and ``viz``, so that none of those has to
import another only for a helper.
"""

from .boxes import cut_box
from .files import atomic_write, file_digest, fsync_path, sha256_file
from .shapes import to_2tuple
from .unpickle import PickleLimits, UnsafePickleError, load_pickle, scan_pickle

__all__ = [
    "PickleLimits",
    "UnsafePickleError",
    "atomic_write",
    "cut_box",
    "file_digest",
    "fsync_path",
    "load_pickle",
    "scan_pickle",
    "sha256_file",
    "to_2tuple",
]
