"""Image classification datasets behind one interface, opened from one spec string.

:func:`open_dataset` accepts:

- an **ImageFolder** directory, ``<root>/<class>/**/<image>`` (class = folder name, sorted;
  extensions as torchvision: jpg jpeg png ppm bmp pgm tif tiff webp, any case). If ``<root>``
  holds split folders (``train``, ``val``, ``validation``, ``test``) the split picks one; ``val``
  falls back to ``validation`` then ``test`` (CIFAR-style trees have no ``val``). Otherwise
  ``<root>`` is taken as the split itself. Opening lists directories only (no image headers are
  read), so 50k files open in well under a second. Symbolic links to directories are followed,
  but each real directory (``st_dev``, ``st_ino``) is listed once: a link back to a folder above
  it (a loop) or to a folder already listed is skipped with a warning naming the link, so a
  self-link cannot multiply a class and two cannot make the listing run forever;
- the **CIFAR-10 python archive** ``cifar-10-python.tar.gz``, its extracted
  ``cifar-10-batches-py`` folder, or a folder holding either. Train = ``data_batch_1..5``
  (50,000 images), ``val``/``test`` = ``test_batch`` (10,000). The batches are pickles; they are
  read with an allow-list unpickler that accepts only what a CIFAR batch contains (dicts, lists,
  bytes and numpy uint8 arrays), never with plain ``pickle.load``. ``download=True`` fetches the
  archive first when it is missing (:mod:`tokenmix.data.download`);
- an **ImageNet-style list file**, one ``relative/path.JPEG label`` per line (blank lines and
  ``#`` comments ignored, paths may contain spaces), resolved against the list file's folder or
  against ``ROOT`` when written ``ROOT::LISTFILE``. Paths that leave the root (absolute, or
  climbing out with ``..``) are refused unless ``allow_outside_root=True``. Class names come from
  a ``classes.txt`` next to the list file (line ``k`` names class ``k``; labels must be below its
  length) when present, else ``"0"``, ``"1"``, ... up to the largest label, which must then be
  below :data:`MAX_UNNAMED_CLASSES` (one typo such as ``999999999`` would otherwise build a
  billion class names);
- ``digits``: the embedded default, the 1,797 handwritten digits of scikit-learn's
  ``load_digits()`` (8x8, 16 grey levels; shipped in the package as ``data/digits.npz``, with
  their notice in ``data/digits_NOTICE.txt``, so available offline), upscaled bilinearly to
  32x32 RGB uint8. Deterministic split: sample ``k`` of ``load_digits()`` is in ``val``/``test`` when
  ``k % 5 == 0`` (360 images), else in ``train`` (1,437 images). Classes ``"0"``..``"9"``.

Every dataset is an :class:`ImageDataset`: ``classes``, ``len``, ``sample_id(i)`` (stable and
unique: the relative path, ``cifar10/train/00123``, ``digits/00123``), ``label(i)``, ``load(i)``
(RGB ``PIL.Image`` or :class:`~tokenmix.data.decode.BadImageError`) and ``dataset[i] ->
(uint8 [3, H, W], label, i)`` resized by ``dataset.transform`` to ``dataset.load_size``.
With ``bad_images="skip"``, ``dataset[i]`` returns a :class:`SkippedSample` for an unreadable
file instead of raising; the loader (:mod:`tokenmix.data.loader`) counts and logs those. File
datasets refuse images larger than ``max_pixels`` before decoding them (see
:mod:`tokenmix.data.decode`); they count as unreadable. Opening a ``train`` split with a single
class logs a warning: such a run reaches 100 % accuracy without learning anything.
"""

from __future__ import annotations

import logging
import os
import pickle
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..utils.unpickle import NUMPY_ARRAY_GLOBALS, load_pickle
from .decode import DEFAULT_MAX_PIXELS, BadImageError, check_bad_images_policy, decode_image
from .download import CIFAR10_ARCHIVE, download_cifar10
from .transforms import SquashResize

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
_SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation", "test"), "test": ("test",)}
_CIFAR_DIR = "cifar-10-batches-py"
# Classes a list file may use without a classes.txt: ImageNet-21k has 21,841, so 100,000 leaves
# room for real label sets while a typo cannot allocate gigabytes of names.
MAX_UNNAMED_CLASSES = 100_000

Transform = Callable[[Image.Image], torch.Tensor]


class SkippedSample(NamedTuple):
    """Stands in for an unreadable sample under ``bad_images="skip"``."""

    index: int
    sample_id: str
    reason: str


class ImageDataset(Dataset):
    """Base class: labelled images with stable ids, decoded on demand.

    Subclasses implement ``__len__``, ``sample_id``, ``label``, ``load`` and ``labels``.

    Attributes:
        classes: class names; ``label(i)`` indexes this list.
        transform: worker-side ``PIL.Image -> uint8 [3, H, W]`` used by ``__getitem__``; replace
            it with the train or eval transform (:mod:`tokenmix.data.transforms`) before
            building a loader. It must be picklable (a module-level class, no lambdas).
        bad_images: ``"error"`` (raise, naming the file) or ``"skip"``.
    """

    default_load_size = 224

    def __init__(
        self,
        classes: Sequence[str],
        *,
        bad_images: str = "error",
        transform: Transform | None = None,
    ) -> None:
        self.classes = list(classes)
        self.bad_images = check_bad_images_policy(bad_images)
        self.transform: Transform = transform or SquashResize(self.default_load_size)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def load_size(self) -> tuple[int, int]:
        """``(height, width)`` of the tensors ``__getitem__`` returns."""
        return tuple(self.transform.output_size)  # type: ignore[attr-defined]

    @property
    def labels(self) -> np.ndarray:
        """All labels as an int64 array (no image is read)."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def sample_id(self, i: int) -> str:
        raise NotImplementedError

    def label(self, i: int) -> int:
        return int(self.labels[self._index(i)])

    def load(self, i: int, *, draft_size: tuple[int, int] | None = None) -> Image.Image:
        """Decode sample ``i`` as an RGB ``PIL.Image``; raises ``BadImageError`` naming the file."""
        raise NotImplementedError

    def _index(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {type(self).__name__} of {len(self)}")
        return i

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | SkippedSample:
        i = self._index(i)
        try:
            img = self.load(i, draft_size=getattr(self.transform, "draft_size", None))
        except BadImageError as err:
            if self.bad_images == "error":
                raise
            return SkippedSample(i, self.sample_id(i), str(err))
        return self.transform(img), self.label(i), i

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.describe()}, {len(self)} images, "
            f"{self.num_classes} classes, transform={self.transform})"
        )

    def describe(self) -> str:
        """Where the data comes from, for logs."""
        return ""


class FileDataset(ImageDataset):
    """Images stored as files under ``root``; the base of ImageFolder and list files.

    Relative paths live in one fixed-width numpy bytes array rather than a list of Python
    strings, so forked DataLoader workers do not copy them through reference counting.
    ``max_pixels`` caps the size an image header may declare before it is decoded (``None``:
    Pillow's limit only).
    """

    def __init__(
        self,
        root: str | Path,
        paths: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        **kwargs: Any,
    ) -> None:
        super().__init__(classes, **kwargs)
        self.root = Path(root)
        self.max_pixels = max_pixels
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self._paths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
        self._labels = np.asarray(labels, dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def __len__(self) -> int:
        return len(self._paths)

    def sample_id(self, i: int) -> str:
        return os.fsdecode(self._paths[self._index(i)])

    def path(self, i: int) -> Path:
        return self.root / self.sample_id(i)

    def load(self, i: int, *, draft_size: tuple[int, int] | None = None) -> Image.Image:
        path = self.path(i)
        return decode_image(path, name=str(path), draft_size=draft_size, max_pixels=self.max_pixels)

    def describe(self) -> str:
        return str(self.root)


class ImageFolder(FileDataset):
    """``<root>/<class>/**/<image>``; classes are the sorted sub-folder names."""

    def __init__(self, root: str | Path, **kwargs: Any) -> None:
        root = Path(root)
        classes = sorted(
            e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")
        )
        if not classes:
            raise FileNotFoundError(f"{root}: no class folders (expected <root>/<class>/<image>)")
        paths: list[str] = []
        labels: list[int] = []
        listed = {_dir_id(root): "."}  # shared by the classes: no directory listed twice
        for k, name in enumerate(classes):
            found = _list_images(root, name, listed)
            if not found:
                raise FileNotFoundError(
                    f"{root / name}: class folder without images ({', '.join(IMG_EXTENSIONS)})"
                )
            paths += found
            labels += [k] * len(found)
        super().__init__(root, paths, labels, classes, **kwargs)


def _dir_id(path: str | Path) -> tuple[int, int]:
    """What identifies a real directory, whichever links lead to it."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _list_images(root: Path, class_dir: str, listed: dict[tuple[int, int], str]) -> list[str]:
    """Relative paths of the images under ``root/class_dir``, sorted, without reading them.

    The order is ``os.walk``'s (a folder's files, then its sub-folders depth-first, both sorted).
    Links are followed, but a directory whose ``(st_dev, st_ino)`` is already in ``listed``
    (relative paths of the directories listed so far, updated here) is skipped with a warning,
    so loops cannot repeat or never end. Unreadable sub-folders are warned about and skipped.
    """
    out: list[str] = []
    top = root / class_dir
    top_id = _dir_id(top)
    if top_id in listed:
        _warn_relisted(root, class_dir, top_id, listed, ancestors=())
        return out
    listed[top_id] = class_dir
    # depth-first stack of (relative path, ids of the directories above it and itself)
    stack: list[tuple[str, tuple[tuple[int, int], ...]]] = [(class_dir, (top_id,))]
    while stack:
        rel, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(root / rel), key=lambda e: e.name)
        except OSError as err:
            log.warning("%s: cannot list folder, skipped (%s)", root / rel, err)
            continue
        subdirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links, like os.walk(followlinks=True)
            except OSError:
                is_dir = False
            if not is_dir:
                if entry.name.lower().endswith(IMG_EXTENSIONS):
                    out.append(f"{rel}/{entry.name}".replace(os.sep, "/"))
                continue
            child = f"{rel}/{entry.name}"
            try:
                child_id = _dir_id(entry.path)
            except OSError as err:
                log.warning("%s: cannot read folder, skipped (%s)", entry.path, err)
                continue
            if child_id in listed:
                _warn_relisted(root, child, child_id, listed, ancestors)
                continue
            listed[child_id] = child
            subdirs.append((child, (*ancestors, child_id)))
        stack += reversed(subdirs)
    return out


def _warn_relisted(
    root: Path,
    rel: str,
    dir_id: tuple[int, int],
    listed: dict[tuple[int, int], str],
    ancestors: tuple[tuple[int, int], ...],
) -> None:
    first = listed[dir_id]
    if dir_id in ancestors or first == ".":
        log.warning(
            "%s: symlink loop, leads back to %s above it; not followed", root / rel, root / first
        )
    else:
        log.warning(
            "%s: leads to %s, which is already listed; not followed", root / rel, root / first
        )


class ListFileDataset(FileDataset):
    """An ImageNet-style list file: ``relative/path label`` per line.

    Args:
        list_file: the list.
        root: folder the paths are relative to (default: the list file's folder).
        allow_outside_root: accept absolute paths and paths that climb out of ``root`` with
            ``..``. Off by default: such a line is more often a mistake, or a list from
            elsewhere reading files it should not, than intended.
        **kwargs: as :class:`FileDataset` (``bad_images``, ``transform``, ``max_pixels``).
    """

    def __init__(
        self,
        list_file: str | Path,
        root: str | Path | None = None,
        *,
        allow_outside_root: bool = False,
        **kwargs: Any,
    ) -> None:
        list_file = Path(list_file)
        root = Path(root) if root is not None else list_file.parent
        classes_txt = list_file.parent / "classes.txt"
        named: list[str] | None = None
        if classes_txt.is_file():
            text = classes_txt.read_text(encoding="utf-8")
            named = [ln.strip() for ln in text.splitlines() if ln.strip()]
        paths, labels = _parse_list_file(
            list_file,
            num_classes=MAX_UNNAMED_CLASSES if named is None else len(named),
            classes_txt=None if named is None else classes_txt,
            allow_outside_root=allow_outside_root,
        )
        classes = named if named is not None else [str(k) for k in range(max(labels) + 1)]
        self.list_file = list_file
        super().__init__(root, paths, labels, classes, **kwargs)

    def describe(self) -> str:
        return f"{self.root}::{self.list_file}"


def _parse_list_file(
    list_file: Path,
    *,
    num_classes: int,
    classes_txt: Path | None,
    allow_outside_root: bool,
) -> tuple[list[str], list[int]]:
    """Paths and labels of a list file; every error names the file and line.

    Labels must be below ``num_classes`` (the length of ``classes_txt``, or
    :data:`MAX_UNNAMED_CLASSES` without one).
    """
    paths, labels = [], []
    with open(list_file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{list_file}:{n}: expected 'relative/path label', got {line!r}")
            path, label = parts[0], int(parts[1])
            if label < 0:
                raise ValueError(f"{list_file}:{n}: negative label {label}")
            if label >= num_classes:
                if classes_txt is not None:
                    raise ValueError(
                        f"{list_file}:{n}: label {label}, but {classes_txt} names only "
                        f"{num_classes} classes (labels 0..{num_classes - 1})"
                    )
                raise ValueError(
                    f"{list_file}:{n}: label {label} is not below {num_classes:,}, the most "
                    "classes a list file may number without names; put a classes.txt next to "
                    "the list file (line k names class k) if the data really has that many"
                )
            if not allow_outside_root and _leaves_root(path):
                raise ValueError(
                    f"{list_file}:{n}: path {path!r} is outside the dataset root (absolute or "
                    "climbing out with '..'); pass allow_outside_root=True "
                    "(data.allow_outside_root) if the list is meant to reach there"
                )
            paths.append(path)
            labels.append(label)
    if not paths:
        raise ValueError(f"{list_file}: no entries")
    return paths, labels


def _leaves_root(path: str) -> bool:
    """Whether a list-file path, taken relative to the root, names something outside it.

    Judged on the text alone (``a/../../x`` leaves, ``a/../x`` does not); links inside the root
    that point elsewhere are the dataset owner's choice and are followed.
    """
    if os.path.isabs(path) or os.path.splitdrive(path)[0]:
        return True
    parts = os.path.normpath(path).split(os.sep)
    return parts[0] == ".."


class ArrayDataset(ImageDataset):
    """Images held in memory as a uint8 ``[N, H, W, 3]`` array (CIFAR-10, digits)."""

    default_load_size = 32

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        classes: Sequence[str],
        *,
        id_prefix: str,
        source: str,
        id_numbers: np.ndarray | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(classes, **kwargs)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"{source}: expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}"
            )
        self._images = images
        self._labels = np.asarray(labels, dtype=np.int64)
        self._prefix = id_prefix
        self._source = source
        self._id_numbers = np.arange(len(images)) if id_numbers is None else np.asarray(id_numbers)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def __len__(self) -> int:
        return len(self._images)

    def sample_id(self, i: int) -> str:
        return f"{self._prefix}/{self._id_numbers[self._index(i)]:05d}"

    def load(self, i: int, *, draft_size: tuple[int, int] | None = None) -> Image.Image:
        return Image.fromarray(self._images[self._index(i)], mode="RGB")

    def describe(self) -> str:
        return self._source


# --------------------------------------------------------------------------- CIFAR-10


# A CIFAR batch holds dicts, lists, bytes and numpy uint8 arrays; the bounded unpickler also
# refuses one that would expand (nested ``_codecs.encode(..., "hex")``) or nest without bound.
_CIFAR_REFUSAL = "a CIFAR batch only holds dicts, lists, bytes and numpy arrays"


def _load_cifar_pickle(data: bytes, source: str) -> dict[str, Any]:
    try:
        obj = load_pickle(
            data, source, NUMPY_ARRAY_GLOBALS, encoding="bytes", refusal=_CIFAR_REFUSAL
        )
    except pickle.UnpicklingError:
        raise
    except Exception as err:
        raise ValueError(
            f"{source}: not a CIFAR python batch ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_cifar_pickle(data, source)
    images, labels = batch.get("data"), batch.get("labels")
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 2
        or images.shape[1] != 3072
    ):
        raise ValueError(f"{source}: 'data' must be a uint8 [N, 3072] array")
    if not isinstance(labels, list) or len(labels) != len(images):
        raise ValueError(f"{source}: 'labels' must be a list of {len(images)} ints")
    labels_arr = np.asarray(labels, dtype=np.int64)
    if labels_arr.size and (labels_arr.min() < 0 or labels_arr.max() > 9):
        raise ValueError(f"{source}: labels outside 0..9")
    hwc = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(hwc), labels_arr


def _cifar_classes(data: bytes, source: str) -> list[str]:
    names = _load_cifar_pickle(data, source).get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise ValueError(f"{source}: 'label_names' must list 10 class names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _cifar_members(split: str) -> list[str]:
    return [f"data_batch_{k}" for k in range(1, 6)] if split == "train" else ["test_batch"]


def open_cifar10(path: str | Path, split: str = "train", **kwargs: Any) -> ArrayDataset:
    """CIFAR-10 from ``cifar-10-python.tar.gz`` or its extracted folder (see module docstring)."""
    path = Path(path)
    wanted = [*_cifar_members(split), "batches.meta"]
    blobs: dict[str, bytes] = {}
    if path.is_file():
        with tarfile.open(path, "r|gz") as tar:  # stream: one pass over the gzip
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    blobs[base] = tar.extractfile(member).read()  # type: ignore[union-attr]
    else:
        folder = path / _CIFAR_DIR if (path / _CIFAR_DIR).is_dir() else path
        for base in wanted:
            if (folder / base).is_file():
                blobs[base] = (folder / base).read_bytes()
    missing = [w for w in wanted if w not in blobs]
    if missing:
        raise FileNotFoundError(
            f"{path}: not a complete CIFAR-10 python archive, missing {missing}"
        )
    classes = _cifar_classes(blobs["batches.meta"], f"{path}:batches.meta")
    parts = [_cifar_batch(blobs[m], f"{path}:{m}") for m in _cifar_members(split)]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    name = "train" if split == "train" else "test"
    return ArrayDataset(
        images, labels, classes, id_prefix=f"cifar10/{name}", source=f"{path} [{name}]", **kwargs
    )


def _find_cifar(path: Path) -> Path | None:
    """The CIFAR-10 archive or folder ``path`` points to, if it points to one."""
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        return path
    if path.is_dir():
        if (path / "batches.meta").is_file() or (path / _CIFAR_DIR).is_dir():
            return path
        if (path / CIFAR10_ARCHIVE).is_file():
            return path / CIFAR10_ARCHIVE
    return None


# --------------------------------------------------------------------------- digits


DIGITS_FILE = "digits.npz"  # next to this module, with its notice in digits_NOTICE.txt


def open_digits(split: str = "train", **kwargs: Any) -> ArrayDataset:
    """The 1,797 handwritten digits as 32x32 RGB (see module docstring for the split).

    The 8x8 arrays ship inside the package (45 kB; a copy of scikit-learn's, which would
    otherwise pull scikit-learn and SciPy into every install only for them) and are read
    without pickle, so the result is byte for byte what ``sklearn.datasets.load_digits()``
    gave before (``tests/test_cli.py`` checks against scikit-learn where it is installed).
    """
    from importlib.resources import files

    resource = files("tokenmix.data") / DIGITS_FILE
    try:
        with resource.open("rb") as f, np.load(f, allow_pickle=False) as z:
            pixels, target = z["images"], z["target"]
    except (OSError, KeyError, ValueError) as e:
        raise FileNotFoundError(
            f"{resource}: the bundled digits are missing or damaged ({e}); reinstall tokenmix"
        ) from e
    grey = torch.from_numpy(pixels.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    big = F.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    images = big.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    index = np.arange(len(images))
    keep = index % 5 != 0 if split == "train" else index % 5 == 0
    rgb = np.ascontiguousarray(np.repeat(images[keep][..., None], 3, axis=-1))
    return ArrayDataset(
        rgb,
        target[keep].astype(np.int64),
        [str(k) for k in range(10)],
        id_prefix="digits",
        source=f"digits [{split}]",
        id_numbers=index[keep],  # ids name the image in load_digits(), whatever the split
        **kwargs,
    )


def open_dataset(
    spec: str | Path,
    split: str = "train",
    *,
    bad_images: str = "error",
    transform: Transform | None = None,
    download: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_outside_root: bool = False,
) -> ImageDataset:
    """Open a dataset from a spec string (forms listed in the module docstring).

    Args:
        spec: ``digits``, a folder, a CIFAR-10 archive, a list file or ``ROOT::LISTFILE``.
        split: ``train``, ``val`` or ``test`` (ignored by list files and split-less folders,
            which are one split each).
        bad_images: ``"error"`` or ``"skip"`` (see :mod:`tokenmix.data.decode`).
        transform: worker-side transform for ``dataset[i]``; defaults to a square resize to
            the dataset's native size (32 for CIFAR-10 and digits, 224 for files).
        download: fetch the CIFAR-10 archive into ``spec`` (an archive path or a folder) when
            no CIFAR-10 data is there yet.
        max_pixels: image files declaring more pixels are unreadable (decompression bombs;
            :mod:`tokenmix.data.decode`); ``None`` keeps only Pillow's limit.
        allow_outside_root: let list files name absolute paths or paths above their root.
    """
    dataset = _open(
        spec,
        split,
        bad_images=bad_images,
        transform=transform,
        download=download,
        max_pixels=max_pixels,
        allow_outside_root=allow_outside_root,
    )
    if split == "train" and dataset.num_classes < 2:
        log.warning(
            "%s: the training split has only %d class (%s); every prediction is right by "
            "construction, so accuracy will read 100%% without anything being learned",
            dataset.describe() or spec,
            dataset.num_classes,
            ", ".join(dataset.classes) or "none",
        )
    return dataset


def _open(
    spec: str | Path,
    split: str,
    *,
    bad_images: str,
    transform: Transform | None,
    download: bool,
    max_pixels: int | None,
    allow_outside_root: bool,
) -> ImageDataset:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    kwargs: dict[str, Any] = {
        "bad_images": check_bad_images_policy(bad_images),
        "transform": transform,
    }
    spec = str(spec)
    if spec == "digits":
        return open_digits(split, **kwargs)
    files = {"max_pixels": max_pixels, **kwargs}
    listed = {"allow_outside_root": allow_outside_root, **files}
    if "::" in spec:
        root, list_file = spec.split("::", 1)
        return ListFileDataset(Path(list_file).expanduser(), Path(root).expanduser(), **listed)
    path = Path(spec).expanduser()
    if download and _find_cifar(path) is None:
        path = download_cifar10(path)
    cifar = _find_cifar(path)
    if cifar is not None:
        return open_cifar10(cifar, split, **kwargs)
    if path.is_file():
        return ListFileDataset(path, **listed)
    if path.is_dir():
        return ImageFolder(_split_dir(path, split), **files)
    raise FileNotFoundError(
        f"dataset {spec!r} not found; expected 'digits', an ImageFolder directory, a CIFAR-10 "
        "archive or folder, a list file, or ROOT::LISTFILE"
    )


def _split_dir(root: Path, split: str) -> Path:
    children = {e.name for e in os.scandir(root) if e.is_dir()}
    split_dirs = children & {"train", "val", "validation", "test"}
    if not split_dirs:
        return root
    for name in _SPLIT_DIRS[split]:
        if name in children:
            if name != split:
                log.info("%s: no '%s' folder, using '%s' for split %s", root, split, name, split)
            return root / name
    raise FileNotFoundError(
        f"{root} has split folders {sorted(split_dirs)} but none for split {split!r} "
        f"(looked for {list(_SPLIT_DIRS[split])})"
    )
