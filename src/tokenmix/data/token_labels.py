"""Token labels: a teacher's dense class scores per image, stored once, cropped with the image.

Token Labeling (Jiang et al., "All Tokens Matter", NeurIPS 2021; zihangJiang/TokenLabeling)
trains every patch token of LV-ViT against the score a teacher gives the image region under
it. Three steps:

1. :func:`tokenmix.engine.relabel.relabel_dataset` runs a teacher densely over a dataset
   (``tokenmix relabel``) and keeps the top-k class probabilities per location of a ``grid``.
2. :class:`TokenLabelStore` (here) reads them back: ONE memory-mapped file for the whole dataset and an
   index from sample id to row (the official release stores one small ``.pt`` file per image,
   1.28 million files for ImageNet).
3. :func:`token_label_targets` (here) turns a batch of stored maps into per-token targets
   ``[B, N, C]`` using the SAME crop boxes and flips as the images (``tokenmix.data.crops``).

Alignment. The teacher sees the whole image resized to its input size (no crop), so a map
covers the image exactly and the normalised crop boxes apply to it unchanged. The map is
cropped and flipped with the same ``grid_sample`` code as the pixels and then average-pooled to
the token grid, so each token's target is the teacher's score over that token's pixels.
``tests/test_token_labeling.py`` proves it with an asymmetric crop of an image whose class
layout is known. (The official pipeline passes ``(top, left, bottom, right)`` coordinates to
``roi_align``, which reads ``(x1, y1, x2, y2)``: its label crop is transposed whenever the crop
is not square.)

Storage layout of a label directory::

    labels.npy      structured array, one row per sample: values float16 [k, h, w]
                    (teacher softmax probabilities) and indices int16/int32 [k, h, w];
                    read through a memmap
    index.json      metadata (teacher, dataset, grid, top-k, classes) and the sample ids
    progress.json   ``{"done": N}`` once all N rows are written, ``{"done": 0}`` before
                    (directories of earlier versions may hold a count of finished leading rows,
                    which is honoured)
    progress-rank{r}.json
                    while unfinished: the row ranges ``[start, end)`` that rank ``r`` has
                    written and flushed, rewritten atomically after each of its chunks;
                    removed when the last row is done

Writing the labels (the teacher pass, sharded under ``torchrun``) is
:mod:`tokenmix.engine.relabel`; this module is the format (with its progress records, which
that writer uses), its reader and the targets.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..utils import atomic_write
from .crops import crop_resize

__all__ = [
    "TokenLabelStore",
    "finished_rows",
    "label_maps",
    "merge_ranges",
    "rank_progress_files",
    "read_json",
    "read_rank_progress",
    "row_dtype",
    "token_label_targets",
    "write_json_atomic",
]

FORMAT = "tokenmix-token-labels"
VERSION = 1
LABELS_FILE = "labels.npy"
INDEX_FILE = "index.json"
PROGRESS_FILE = "progress.json"
RANK_PROGRESS_FILE = "progress-rank{rank}.json"
RANK_PROGRESS_PATTERN = re.compile(r"progress-rank(\d+)\.json")


class LabeledImages(Protocol):
    """What relabeling needs from a dataset (``tokenmix.data.datasets.ImageDataset`` has it)."""

    classes: list[str]

    def __len__(self) -> int: ...
    def sample_id(self, i: int) -> str: ...
    def load(self, i: int) -> Image.Image: ...


def row_dtype(topk: int, grid: tuple[int, int], num_classes: int) -> np.dtype:
    """One sample's record: top-k values (float16) and class indices on the grid."""
    index_type = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
    shape = (topk, grid[0], grid[1])
    return np.dtype([("values", np.float16, shape), ("indices", index_type, shape)])


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write, fsync, then rename over ``path``: readers see the old or the new file, never half."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj)))


def read_json(path: Path) -> Any:
    """A JSON file of a label directory; a missing or malformed one is an error naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found: is {path.parent} a token-label directory?"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


# --- progress records ---------------------------------------------------------------------------
def merge_ranges(ranges: Sequence[Sequence[int]]) -> list[list[int]]:
    """Sorted, disjoint ``[start, end)`` row ranges covering the same rows as ``ranges``."""
    merged: list[list[int]] = []
    for start, end in sorted((int(a), int(b)) for a, b in ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def rank_progress_files(out: Path) -> list[Path]:
    """The per-rank progress records (``progress-rank<N>.json``) a sharded run left in ``out``."""
    return sorted(p for p in out.iterdir() if RANK_PROGRESS_PATTERN.fullmatch(p.name))


def read_rank_progress(path: Path, num_rows: int) -> list[list[int]]:
    """The finished row ranges one rank recorded; a malformed record is an error naming it."""
    record = read_json(path)
    rows = record.get("rows") if isinstance(record, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(r, list)
        and len(r) == 2
        and all(isinstance(v, int) for v in r)
        and 0 <= r[0] <= r[1] <= num_rows
        for r in rows
    ):
        raise ValueError(
            f"{path}: not a progress record of {num_rows} rows (expected "
            '{"rows": [[start, end], ...]}); delete the label directory to start over'
        )
    return merge_ranges(rows)


def finished_rows(out: Path, num_rows: int) -> list[list[int]]:
    """Every row range recorded as finished: progress.json's leading rows and each rank's."""
    done = int(read_json(out / PROGRESS_FILE)["done"])
    ranges = [[0, min(done, num_rows)]]
    for path in rank_progress_files(out):
        ranges += read_rank_progress(path, num_rows)
    return merge_ranges(ranges)


# --- reading ----------------------------------------------------------------------------------
class TokenLabelStore:
    """Read-only access to a finished label directory, by sample id.

    The memmap is opened lazily in each process, so the store can be handed to DataLoader
    workers; reading a batch touches only its rows.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = read_json(self.path / INDEX_FILE)
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise ValueError(
                f"{self.path / INDEX_FILE}: not a tokenmix token-label index "
                f"(format {index.get('format')!r}, version {index.get('version')!r})"
            )
        self.meta: dict[str, Any] = index["meta"]
        self.sample_ids: list[str] = index["ids"]
        self._row_of = {sid: i for i, sid in enumerate(self.sample_ids)}
        if len(self._row_of) != len(self.sample_ids):
            raise ValueError(f"{self.path / INDEX_FILE}: duplicate sample ids")
        num_rows = len(self.sample_ids)
        if int(read_json(self.path / PROGRESS_FILE)["done"]) < num_rows:
            done = sum(end - start for start, end in finished_rows(self.path, num_rows))
            raise ValueError(
                f"{self.path} is incomplete ({done} of {num_rows} samples labelled); "
                "run the same `tokenmix relabel` command again (any number of processes) to "
                "finish it"
            )
        self._array: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def topk(self) -> int:
        return int(self.meta["topk"])

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.meta["grid"]
        return int(h), int(w)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._row_of

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None  # each process maps the file itself
        return state

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            arr = np.load(self.path / LABELS_FILE, mmap_mode="r")
            expected = row_dtype(self.topk, self.grid, self.num_classes)
            if arr.dtype != expected or arr.shape != (len(self.sample_ids),):
                raise ValueError(
                    f"{self.path / LABELS_FILE}: holds {arr.shape} of {arr.dtype}, the index "
                    f"says {len(self.sample_ids)} rows of {expected}"
                )
            self._array = arr
        return self._array

    def rows(self, sample_ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``sample_ids``; an unknown id is an error that names it."""
        try:
            return np.fromiter((self._row_of[s] for s in sample_ids), np.int64, len(sample_ids))
        except KeyError as e:
            raise KeyError(
                f"sample {e.args[0]!r} has no token labels in {self.path}; were they made for "
                "this dataset and split?"
            ) from None

    def load(self, sample_ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k maps of a batch: values float32 ``[B, k, h, w]``, indices int64 ``[B, k, h, w]``."""
        rows = self.rows(sample_ids)
        records = self.array[rows]
        values = torch.from_numpy(records["values"].astype(np.float32))
        indices = torch.from_numpy(records["indices"].astype(np.int64))
        return values, indices


# --- from stored maps to token targets --------------------------------------------------------
def label_maps(values: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Scatter top-k maps ``[B, k, h, w]`` into dense class maps ``[B, num_classes, h, w]``.

    Classes outside the top k get 0, as in the official ``get_featuremaps``.
    """
    if int(indices.max()) >= num_classes or int(indices.min()) < 0:
        raise ValueError(
            f"token labels hold class indices in [{int(indices.min())}, {int(indices.max())}], "
            f"outside the model's {num_classes} classes"
        )
    b, _, h, w = values.shape
    out = torch.zeros(b, num_classes, h, w, device=values.device, dtype=torch.float32)
    return out.scatter_(1, indices.long(), values.float())


def token_label_targets(
    values: torch.Tensor,
    indices: torch.Tensor,
    boxes: torch.Tensor,
    grid: tuple[int, int],
    num_classes: int,
    flip: torch.Tensor | None = None,
    oversample: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token and class targets for a batch cropped with ``boxes`` (and mirrored where ``flip``).

    The dense maps are cropped with :func:`tokenmix.data.crops.crop_resize` (the function that
    crops the images), sampled at ``oversample`` points per token side and averaged per token:
    the area average that ``roi_align`` computes in the official code, without torchvision.

    Args:
        values, indices: stored top-k maps ``[B, k, h, w]`` (:meth:`TokenLabelStore.load`).
        boxes: crop boxes ``[B, 4]`` ``(x0, y0, x1, y1)``, normalised to the full image.
        grid: the model's patch grid ``(rows, cols)``.
        num_classes: the model's class count.
        flip: ``[B]`` bool, horizontal flips applied to the images after cropping.
        oversample: samples per token side; by default, as ``roi_align``'s adaptive sampling,
            enough that every label cell a token covers is sampled (1 when the crop's label
            cells are no finer than the tokens, the usual case, which keeps the dense
            ``[B, C, rows, cols]`` intermediate small). Choosing it reads the boxes, a device
            synchronisation when they live on an accelerator; pass it to avoid that.

    Returns:
        ``(dense [B, rows*cols, C], cls [B, C])``; ``cls`` is the crop average, which the
        official recipe uses as the class token's target.
    """
    maps = label_maps(values.float(), indices, num_classes)
    rows, cols = grid
    if oversample is None:
        size = (boxes[:, 2:] - boxes[:, :2]).max(dim=0).values.tolist()  # widest crop (w, h)
        cells = max(size[0] * maps.shape[-1] / cols, size[1] * maps.shape[-2] / rows)
        oversample = max(math.ceil(cells - 1e-6), 1)
    crops = crop_resize(maps, boxes, (rows * oversample, cols * oversample), flip, "bilinear")
    tokens = F.avg_pool2d(crops, oversample) if oversample > 1 else crops
    dense = tokens.flatten(2).transpose(1, 2)
    return dense, dense.mean(dim=1)
