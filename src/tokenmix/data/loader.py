"""DataLoader construction: deterministic, rank-split, resumable mid-epoch, bad images counted.

:func:`build_loader` returns a :class:`Loader`, a thin wrapper over ``torch.utils.data.DataLoader``
that adds what a long, possibly distributed run needs:

- **Order** comes from :class:`ResumableSampler`: a permutation seeded with ``seed + epoch``
  (the same rule as ``torch.utils.data.DistributedSampler``), split across ranks by striding;
  the training sampler pads with the first indices so every rank gets the same number of
  batches (ranks must step together), the eval sampler does not pad (every image counted once).
- **Mid-epoch resume**: ``loader.state_dict()`` after a step says which epoch and how many
  batches of it were consumed; ``load_state_dict`` makes the next pass over that epoch start at
  the following batch, so a resumed run sees exactly the batches the uninterrupted run would.
- **Bad images** under ``bad_images="skip"``: training replaces an unreadable sample by the next
  readable one in dataset order (batches keep their size, which DDP and compiled graphs rely
  on; the returned index is the substitute's, so labels and token labels stay consistent);
  evaluation drops it (no image counted twice; a batch may be smaller, an empty batch is not
  yielded). Either way the main process logs a warning naming the file and counts it in
  ``loader.num_skipped``.

Workers decode and resize (see :mod:`tokenmix.data.transforms`); batches are
``(uint8 [B, 3, H, W], int64 labels [B], int64 dataset indices [B])``, pinned when CUDA is
available, and ``persistent_workers`` keeps the worker pool across epochs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from .datasets import ImageDataset, SkippedSample

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
_MAX_SUBSTITUTE_TRIES = 64


class ResumableSampler(Sampler[int]):
    """Per-epoch order for one rank, which can start part-way through an epoch.

    Args:
        num_samples: dataset length.
        shuffle: permute with ``torch.randperm`` seeded by ``seed + epoch``; else dataset order.
        seed: base seed, the same on every rank.
        rank: this process's rank; ``world_size``: number of ranks.
        pad: repeat the first indices so the total divides ``world_size`` (training); without
            it, ranks may get one sample less (evaluation).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and the position (in this rank's samples) to start at."""
        self.epoch = epoch
        self.start = start

    def rank_indices(self) -> list[int]:
        """This rank's full index list for the current epoch."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.pad and self.num_samples % self.world_size:
            extra = self.world_size - self.num_samples % self.world_size
            order += (order * (extra // max(len(order), 1) + 1))[:extra]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices()[self.start :])

    @property
    def rank_size(self) -> int:
        """Samples this rank gets in a full epoch."""
        total = self.num_samples
        if self.pad and total % self.world_size:
            total += self.world_size - total % self.world_size
        return len(range(self.rank, total, self.world_size))

    def __len__(self) -> int:
        return max(self.rank_size - self.start, 0)


class _Collate:
    """Stack samples in the worker; substitute (train) or drop (eval) skipped ones."""

    def __init__(self, dataset: ImageDataset, substitute: bool) -> None:
        self.dataset = dataset
        self.substitute = substitute

    def __call__(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        kept, skipped = [], []
        for item in items:
            if isinstance(item, SkippedSample):
                skipped.append((item.sample_id, item.reason))
                if self.substitute:
                    kept.append(self._next_readable(item.index, skipped))
            else:
                kept.append(item)
        if not kept:
            h, w = self.dataset.load_size
            empty = torch.empty(0, dtype=torch.int64)
            return torch.empty(0, 3, h, w, dtype=torch.uint8), empty, empty, skipped
        images = torch.stack([k[0] for k in kept])
        labels = torch.tensor([k[1] for k in kept], dtype=torch.int64)
        indices = torch.tensor([k[2] for k in kept], dtype=torch.int64)
        return images, labels, indices, skipped

    def _next_readable(self, index: int, skipped: list) -> tuple[torch.Tensor, int, int]:
        n = len(self.dataset)
        for step in range(1, min(_MAX_SUBSTITUTE_TRIES, n) + 1):
            item = self.dataset[(index + step) % n]
            if not isinstance(item, SkippedSample):
                return item
            skipped.append((item.sample_id, item.reason))
        raise RuntimeError(
            f"{_MAX_SUBSTITUTE_TRIES} consecutive unreadable images after "
            f"{self.dataset.sample_id(index)}; the data is likely broken, not a few bad files"
        )


class Loader:
    """Iterable of ``(images, labels, indices)`` batches with epoch, resume and skip accounting.

    Build it with :func:`build_loader`. Call :meth:`set_epoch` before each pass. When the
    order comes from a caller's ``batch_sampler`` instead of a :class:`ResumableSampler`, epochs
    and resume positions are that sampler's business: :meth:`set_epoch`, :meth:`state_dict` and
    :meth:`load_state_dict` then raise rather than pretend.

    Attributes:
        dataset: the wrapped dataset. ``batch_size``: per-rank batch size (``None`` with a
            caller's batch sampler).
        num_skipped: unreadable images met so far (``bad_images="skip"``); ``skipped`` keeps
            ``(sample_id, reason)`` of the first 1,000 for reports.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        *,
        train: bool,
        sampler: ResumableSampler | None = None,
        batch_size: int | None = None,
        batch_sampler: Sampler[list[int]] | None = None,
        **loader_kwargs: Any,
    ) -> None:
        if (sampler is None) == (batch_sampler is None) or (sampler is not None) != (
            batch_size is not None
        ):
            raise ValueError("give either sampler and batch_size, or batch_sampler")
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.train = train
        self.drop_last = train
        self.epoch = 0
        self.batch = 0  # batches of the current epoch consumed so far
        self._start = 0  # batch the current pass started at
        self._resume: tuple[int, int] | None = None
        self.num_skipped = 0
        self.skipped: list[tuple[str, str]] = []
        collate = _Collate(dataset, substitute=train)
        if batch_sampler is not None:
            self._loader = DataLoader(
                dataset, batch_sampler=batch_sampler, collate_fn=collate, **loader_kwargs
            )
        else:
            self._loader = DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=sampler,
                drop_last=self.drop_last,
                collate_fn=collate,
                **loader_kwargs,
            )

    @property
    def batches_per_epoch(self) -> int:
        """Batches in a full epoch on this rank."""
        if self.sampler is None or self.batch_size is None:
            return len(self._loader)
        n = self.sampler.rank_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _own_sampler(self) -> ResumableSampler:
        if self.sampler is None:
            raise RuntimeError(
                "this loader's order comes from the batch_sampler given to build_loader; "
                "set its epoch and position through that sampler"
            )
        return self.sampler

    def set_epoch(self, epoch: int) -> None:
        """Prepare the pass over ``epoch``; starts mid-epoch if a loaded state says so."""
        sampler = self._own_sampler()
        start = 0
        if self._resume is not None and self._resume[0] == epoch:
            start = self._resume[1]
        self._resume = None
        self.epoch, self.batch, self._start = epoch, start, start
        sampler.set_epoch(epoch, start * (self.batch_size or 0))

    def __len__(self) -> int:
        """Batches in the current pass (fewer than an epoch when resuming mid-epoch)."""
        if self.sampler is None:
            return len(self._loader)
        return max(self.batches_per_epoch - self._start, 0)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels, indices, skipped in self._loader:
            for sample_id, reason in skipped:
                self._record_skip(sample_id, reason)
            self.batch += 1
            if len(indices) == 0:
                continue
            yield images, labels, indices

    def _record_skip(self, sample_id: str, reason: str) -> None:
        self.num_skipped += 1
        if len(self.skipped) < 1000:
            self.skipped.append((sample_id, reason))
        log.warning(
            "skipped unreadable image %s (%d so far): %s", sample_id, self.num_skipped, reason
        )

    def state_dict(self) -> dict[str, int]:
        """Position to checkpoint: epoch, batches consumed, and what the order depends on."""
        sampler = self._own_sampler()
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": sampler.seed,
            "world_size": sampler.world_size,
            "batch_size": self.batch_size or 0,
            "num_samples": sampler.num_samples,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next ``set_epoch(state["epoch"])`` starts after ``state["batch"]`` batches.

        Raises:
            ValueError: if seed, world size, batch size or dataset length differ, since the
                batches would then not be the ones the checkpointed run was going to see.
        """
        current = self.state_dict()
        for key in ("seed", "world_size", "batch_size", "num_samples"):
            if key in state and state[key] != current[key]:
                raise ValueError(
                    f"cannot resume the loader mid-epoch: {key} was {state[key]}, now {current[key]}"
                )
        self._resume = (int(state["epoch"]), int(state["batch"]))


def default_num_workers(world_size: int = 1) -> int:
    """CPU cores available to this process shared among ranks, at most 8 each."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(min(8, cores // max(world_size, 1)), 0)


def build_loader(
    dataset: ImageDataset,
    *,
    train: bool,
    batch_size: int | None = None,
    batch_sampler: Sampler[list[int]] | None = None,
    num_workers: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool | None = None,
    persistent_workers: bool = True,
    prefetch_factor: int | None = None,
) -> Loader:
    """A :class:`Loader` for training (shuffled, padded, drop_last) or evaluation (in order).

    Args:
        dataset: with its transform already set (train or eval, :mod:`tokenmix.data.transforms`).
        train: training (shuffle, pad ranks, drop the last partial batch, substitute bad images)
            or evaluation (dataset order, no padding, keep the last batch, drop bad images).
        batch_size: per rank, with the built-in :class:`ResumableSampler`.
        batch_sampler: instead of ``batch_size``: any sampler yielding lists of indices (e.g. the
            engine's step-aligned sampler); ``seed``, ``rank`` and ``world_size`` are then unused.
        num_workers: decoding processes; default :func:`default_num_workers`.
        seed: base of the per-epoch shuffle, identical on all ranks.
        rank, world_size: this process's place in a distributed run.
        pin_memory: default: when CUDA is available.
        persistent_workers: keep workers between epochs (ignored with 0 workers).
        prefetch_factor: batches each worker prepares ahead (PyTorch default 2).
    """
    if num_workers is None:
        num_workers = default_num_workers(world_size)
    kwargs: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory,
    }
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    if batch_sampler is not None:
        if batch_size is not None:
            raise ValueError("give batch_size or batch_sampler, not both")
        return Loader(dataset, train=train, batch_sampler=batch_sampler, **kwargs)
    if batch_size is None or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    sampler = ResumableSampler(
        len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train
    )
    return Loader(dataset, train=train, sampler=sampler, batch_size=batch_size, **kwargs)
