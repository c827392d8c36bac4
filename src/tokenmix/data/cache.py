"""Decode a small dataset once and keep it in memory (``data.cache: true``).

Every random part of training augmentation runs batched on the device
(:mod:`tokenmix.data.augment`); what the loader does per sample -- decode the file and resize it
to ``data.load_size`` (:class:`~tokenmix.data.transforms.SquashResize`), or the eval resize and
centre crop -- is the same in every epoch. For CIFAR-sized data that fixed work is most of the
loader's cost (50,000 JPEGs take ~20 s of one core per epoch), and on a 2-core machine the core
a loader process takes is a core the model does not get. Decoding once into one uint8 array
(150 MiB for CIFAR-10 at 32 px) turns every later epoch's loading into indexing.

Unreadable images are handled by the base dataset's ``bad_images`` policy while the cache is
filled: under ``"skip"`` they stay :class:`~tokenmix.data.datasets.SkippedSample` in every epoch.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .datasets import ImageDataset, SkippedSample

log = logging.getLogger("tokenmix")

__all__ = ["CachedDataset", "available_memory_bytes"]


def available_memory_bytes() -> int | None:
    """Memory the OS can hand out now (None where it cannot say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _keep_all(batch: list[Any]) -> list[Any]:
    return batch


class CachedDataset(ImageDataset):
    """``base`` with every sample passed through its transform once, held as uint8 in RAM.

    Args:
        base: the dataset, its transform already the one to cache (deterministic: the loaders'
            worker transforms are).
        name: what the log and progress bar call it (``"train"``, ``"val"``).
        num_workers: processes that decode while the cache is filled.
        max_share: refuse when the cache would take more than this share of the memory
            available now (the error names the size; turn ``data.cache`` off for such data).
    """

    def __init__(
        self,
        base: ImageDataset,
        *,
        name: str = "data",
        num_workers: int = 0,
        progress: bool = True,
        max_share: float = 0.5,
    ) -> None:
        # no super().__init__(): the transform is the base's, fixed by the cache
        self.base = base
        self.classes = base.classes
        self.bad_images = base.bad_images
        h, w = base.load_size
        n = len(base)
        need = n * 3 * h * w
        free = available_memory_bytes()
        if free is not None and need > max_share * free:
            raise MemoryError(
                f"data.cache: {name} set {base.describe()} would take {need / 2**30:.1f} GiB "
                f"({n} images at {h}x{w}), more than {max_share:.0%} of the "
                f"{free / 2**30:.1f} GiB available; set data.cache=false or a smaller "
                "data.load_size"
            )
        self.images = torch.empty((n, 3, h, w), dtype=torch.uint8)
        self.skipped: dict[int, SkippedSample] = {}
        start = time.perf_counter()
        loader = DataLoader(
            base, batch_size=256, num_workers=num_workers, collate_fn=_keep_all, shuffle=False
        )
        with tqdm(total=n, desc=f"cache {name}", unit="img", disable=not progress) as bar:
            for batch in loader:
                for item in batch:
                    if isinstance(item, SkippedSample):
                        self.skipped[item.index] = item
                    else:
                        image, _, index = item
                        self.images[index] = image
                bar.update(len(batch))
        log.info(
            "cached %d %s images (%.1f MiB at %dx%d) in %.1f s%s",
            n - len(self.skipped),
            name,
            need / 2**20,
            h,
            w,
            time.perf_counter() - start,
            f", {len(self.skipped)} unreadable skipped" if self.skipped else "",
        )

    @property
    def transform(self) -> Any:  # type: ignore[override]
        return self.base.transform

    @transform.setter
    def transform(self, value: Any) -> None:
        raise AttributeError(
            "the dataset is cached with its transform; set the transform before caching"
        )

    @property
    def load_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])  # type: ignore[return-value]

    @property
    def labels(self) -> np.ndarray:
        return self.base.labels

    def __len__(self) -> int:
        return len(self.base)

    def sample_id(self, i: int) -> str:
        return self.base.sample_id(i)

    def load(self, i: int, *, draft_size: tuple[int, int] | None = None) -> Any:
        return self.base.load(i, draft_size=draft_size)

    def describe(self) -> str:
        return f"{self.base.describe()} [cached]"

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | SkippedSample:
        i = self._index(i)
        if i in self.skipped:
            return self.skipped[i]
        return self.images[i], self.label(i), i
