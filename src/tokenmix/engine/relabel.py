"""Relabeling: run a teacher densely over a dataset into a token-label directory.

The format and its reader are :mod:`tokenmix.data.token_labels`; this is the writer, the
teacher pass behind ``tokenmix relabel``. It lives in the engine because it drives a model over
a loader in a (possibly distributed) process group.

Scaling out. Under ``torchrun`` every process labels a disjoint share of the dataset into the
same ``labels.npy``. The rows are cut into chunks of ``chunk_size`` counted from row 0, the same
cut for any number of processes; the chunks not yet finished are dealt round-robin (the j-th
unfinished chunk to rank ``j % world_size``, so a fresh run gives chunk c to rank
``c % world_size``). Rank 0 creates the directory while the others wait at a barrier. Before
starting, every rank reads ALL progress records, so a resume skips every finished chunk
whichever rank wrote it and whatever the world size was. The teacher sees the same batches in
every layout (a chunk's rows in ``batch_size`` steps from the chunk's start), which is why the
file is byte-identical to a single-process run (on CPU, tested in
``tests/test_relabel_sharded.py``; on GPUs as far as their kernels are deterministic); a single
process is world size 1 of the same code.

Rows are written with one positioned write per chunk and an ``fsync``, not through a writable
memmap: on a network file system shared by several machines a memmap writes back whole pages,
and a page straddling two ranks' chunks would be written by both, the later with stale bytes of
the other's rows. A byte-range write touches only its own rows.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import kernels
from ..data.token_labels import (
    FORMAT,
    INDEX_FILE,
    LABELS_FILE,
    PROGRESS_FILE,
    RANK_PROGRESS_FILE,
    RANK_PROGRESS_PATTERN,
    VERSION,
    LabeledImages,
    TokenLabelStore,
    finished_rows,
    merge_ranges,
    rank_progress_files,
    read_json,
    read_rank_progress,
    row_dtype,
    write_json_atomic,
)
from ..data.transforms import SquashResize
from . import distributed

__all__ = ["dense_logits", "relabel_dataset"]

log = logging.getLogger("tokenmix")


def dense_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """A classifier's class logits at every location of its final feature map, ``[B, C, h, w]``.

    - Models with ``forward_dense`` (LV-ViT): its per-token ``aux_head`` outputs.
    - Other models (the MetaFormer family): ``forward_head`` applied to every location of the
      final stage map on its own, i.e. the head without the global pooling — the official
      ``generate_label.py`` does the same for CNN teachers with a 1x1-conv copy of the fc layer.
      A MetaFormer head normalises after pooling, so per location the norm sees one vector
      instead of the mean; averaging the dense map does not give the image logits exactly.
    """
    forward_dense = getattr(model, "forward_dense", None)
    if forward_dense is not None:
        return forward_dense(images)
    feats = model.forward_features(images)
    if feats.ndim != 4:
        raise ValueError(
            f"{type(model).__name__}.forward_features returned shape {tuple(feats.shape)}; a "
            "teacher needs a [B, C, H, W] map or a forward_dense method"
        )
    b, c, h, w = feats.shape
    per_location = feats.permute(0, 2, 3, 1).reshape(b * h * w, c, 1, 1)
    logits = model.forward_head(per_location)
    return logits.reshape(b, h, w, -1).permute(0, 3, 1, 2)


class _TeacherInputs(torch.utils.data.Dataset):
    """Dataset samples by row, the whole image squashed to the teacher's input (uint8)."""

    def __init__(self, dataset: LabeledImages, resize: SquashResize) -> None:
        self.dataset = dataset
        self.resize = resize

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.resize(self.dataset.load(i).convert("RGB"))


def _is_label_file(name: str) -> bool:
    """Whether ``name`` is a file that making a label directory leaves before its index exists."""
    if name.startswith(".") and name.endswith(".tmp"):  # an atomic write cut short
        name = name[1:-4]
    return name in (LABELS_FILE, PROGRESS_FILE) or bool(RANK_PROGRESS_PATTERN.fullmatch(name))


def _check_existing(out: Path, meta: dict[str, Any], ids: list[str]) -> bool:
    """Whether ``out`` holds labels made the same way (to resume); made otherwise is an error."""
    index_path = out / INDEX_FILE
    if index_path.exists():
        index = read_json(index_path)
        old = index.get("meta", {})
        changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
        if index.get("format") != FORMAT or changed or index.get("ids") != ids:
            what = ", ".join(f"{k}: {old.get(k)!r} -> {meta.get(k)!r}" for k in changed)
            raise ValueError(
                f"{out} holds token labels made differently ({what or 'other samples'}); "
                "choose another --out or delete it to start over"
            )
        return True
    if out.exists() and any(not _is_label_file(p.name) for p in out.iterdir()):
        raise ValueError(f"{out} exists and is not a token-label directory; choose another --out")
    return False


def _create(out: Path, meta: dict[str, Any], ids: list[str], dtype: np.dtype) -> None:
    """Make a fresh label directory (rank 0 alone); the index goes last, as its presence marks
    a directory that can be resumed."""
    out.mkdir(parents=True, exist_ok=True)
    for path in rank_progress_files(out):  # from a creation that stopped before its index
        path.unlink()
    labels = np.lib.format.open_memmap(out / LABELS_FILE, "w+", dtype, (len(ids),))
    labels.flush()
    del labels
    write_json_atomic(out / PROGRESS_FILE, {"done": 0})
    write_json_atomic(
        out / INDEX_FILE, {"format": FORMAT, "version": VERSION, "meta": meta, "ids": ids}
    )


def _data_offset(path: Path, dtype: np.dtype, num_rows: int) -> int:
    """Byte offset of row 0 in ``labels.npy``, once it is seen to hold the rows the index says."""
    arr = np.load(path, mmap_mode="r")
    if arr.dtype != dtype or arr.shape != (num_rows,):
        raise ValueError(
            f"{path}: holds {arr.shape} of {arr.dtype}, the index says {num_rows} rows of "
            f"{dtype}; delete the label directory to start over"
        )
    return int(arr.offset)


def _chunks_of_rank(
    num_rows: int, chunk_size: int, finished: list[list[int]], rank: int, world_size: int
) -> tuple[list[tuple[int, int]], int]:
    """This rank's unfinished chunks, and how many chunks all ranks have left.

    Chunks are cut from row 0 whatever the world size, so records written by any earlier
    layout mark whole chunks as done (a chunk only partly recorded, after ``chunk_size``
    changed, is redone).
    """
    chunks = [(s, min(s + chunk_size, num_rows)) for s in range(0, num_rows, chunk_size)]
    pending = [(a, b) for a, b in chunks if not any(s <= a and b <= e for s, e in finished)]
    return pending[rank::world_size], len(pending)


class _GlobalCount:
    """Rank 0's progress bar counts every rank's rows: its own per batch, the others' per chunk.

    Every rank posts its finished chunk's row count to an all-reduce once per round and
    collects the sum a round later, so no rank waits for the slowest after each chunk.
    """

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self._posted: tuple[Any, int] | None = None

    def post(self, rows: int) -> None:
        self.collect()
        t = torch.tensor([rows], dtype=torch.int64, device=distributed.collective_device())
        self._posted = (distributed.all_reduce_sum_async(t), rows)

    def collect(self) -> None:
        if self._posted is not None:
            wait, own = self._posted
            self._posted = None
            self.bar.update(int(wait().item()) - own)


@torch.no_grad()
def relabel_dataset(
    teacher: nn.Module,
    dataset: LabeledImages,
    out: str | Path,
    *,
    topk: int = 5,
    grid: tuple[int, int] | None = None,
    input_size: tuple[int, int] | None = None,
    batch_size: int = 64,
    chunk_size: int = 2048,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    amp: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> TokenLabelStore:
    """Label every sample of ``dataset`` with ``teacher``'s dense top-k scores, resumably.

    The teacher runs in eval mode on the whole image squashed to ``input_size`` (default: its
    pretrained cfg's; the training loader squashes the same way, so crop boxes normalised to
    the full image apply to the maps), normalised with its cfg's mean and std. Its per-location logits
    (:func:`dense_logits`) are resized to ``grid`` (bilinear, antialiased; default: the
    teacher's own grid), turned into probabilities, and the top ``topk`` are stored.

    Rows are committed per chunk of ``chunk_size`` samples (rows written and fsynced, then the
    rank's progress record replaced atomically); calling again with the same arguments skips
    every committed chunk and gives the same file as an uninterrupted run. In a process group
    (``torchrun``; initialised by the caller) every rank calls this with the same arguments
    and labels its share of the chunks into the same directory, which must be on a file
    system all ranks share; any world size may resume any other's run (module docstring).

    Args:
        chunk_size: rows per commit and unit of work of a rank; batches start afresh at each
            chunk, so keep it a multiple of ``batch_size`` for full batches.
        meta: extra provenance stored in the index (teacher name, checkpoint, dataset spec);
            resuming requires it to be equal.
        progress: show a bar on rank 0, counting the rows of all ranks (rate and ETA are
            global).

    Returns:
        The finished store.
    """
    out = Path(out)
    device = torch.device(device)
    rank, world_size = distributed.rank_and_world_size()
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if chunk_size < 1 or batch_size < 1:
        raise ValueError(f"chunk_size and batch_size must be >= 1, got {chunk_size}, {batch_size}")
    teacher = teacher.eval().to(device)
    cfg = teacher.pretrained_cfg
    size = tuple(input_size or cfg.input_size[1:])
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1) * 255
    probe = dense_logits(teacher, torch.zeros(1, 3, *size, device=device))
    num_classes = probe.shape[1]
    grid = tuple(grid or probe.shape[-2:])
    if topk > num_classes:
        raise ValueError(f"topk {topk} exceeds the teacher's {num_classes} classes")
    if len(dataset.classes) != num_classes:
        log.warning(
            "the teacher predicts %d classes, the dataset has %d: the labels are in the "
            "teacher's classes (transfer labelling)",
            num_classes,
            len(dataset.classes),
        )

    ids = [dataset.sample_id(i) for i in range(len(dataset))]
    if not ids:
        raise ValueError("the dataset is empty: nothing to label")
    full_meta = {
        **(meta or {}),
        "num_classes": num_classes,
        "topk": topk,
        "grid": list(grid),
        "input_size": list(size),
        "num_samples": len(ids),
        "dataset_classes": list(dataset.classes),
        "scores": "teacher softmax probabilities, top-k per location (float16)",
    }
    dtype = row_dtype(topk, grid, num_classes)
    exists = _check_existing(out, full_meta, ids)
    distributed.barrier()  # every rank has looked before rank 0 creates anything
    if rank == 0 and not exists:
        _create(out, full_meta, ids, dtype)
    distributed.barrier()
    if not (out / INDEX_FILE).exists():
        raise FileNotFoundError(
            f"rank {rank} does not see {out / INDEX_FILE}, which rank 0 made: the label "
            "directory must be on a file system that all processes share"
        )
    offset = _data_offset(out / LABELS_FILE, dtype, len(ids))
    if int(read_json(out / PROGRESS_FILE)["done"]) >= len(ids):
        if rank == 0:  # records left by a run stopped between its last two steps below
            for path in rank_progress_files(out):
                path.unlink()
        return TokenLabelStore(out)
    finished = finished_rows(out, len(ids))
    own_path = out / RANK_PROGRESS_FILE.format(rank=rank)
    own = read_rank_progress(own_path, len(ids)) if own_path.exists() else []
    distributed.barrier()  # every rank has read the records before any rank adds to them
    mine, pending = _chunks_of_rank(len(ids), chunk_size, finished, rank, world_size)
    rounds = math.ceil(pending / world_size)
    done = sum(e - s for s, e in finished)
    if done and rank == 0:
        log.info(
            "%s: resuming after %d of %d samples; %d chunks left for %d process(es)",
            out,
            done,
            len(ids),
            pending,
            world_size,
        )

    # batches never straddle chunks: the teacher sees the same batches in every layout
    batches = [
        list(range(b, min(b + batch_size, end)))
        for start, end in mine
        for b in range(start, end, batch_size)
    ]
    loader = torch.utils.data.DataLoader(
        _TeacherInputs(dataset, SquashResize(size, cfg.interpolation, draft=False)),
        batch_sampler=batches,
        num_workers=num_workers if batches else 0,
        pin_memory=device.type == "cuda",
    )
    # bf16 only where the device has bf16 units: elsewhere a warning and float32 (kernels.amp)
    amp_dtype = kernels.resolve_amp("bf16" if amp else "none", device)
    autocast = kernels.autocast(device, amp_dtype) if amp_dtype is not None else nullcontext()
    with (
        open(out / LABELS_FILE, "r+b") as f,
        tqdm(
            total=len(ids),
            initial=done,
            unit="img",
            desc="relabel",
            disable=not progress or rank != 0,
        ) as bar,
    ):
        count = _GlobalCount(bar)
        images_of = iter(loader)
        for start, end in mine:
            rows = np.zeros(end - start, dtype)
            for row in range(start, end, batch_size):
                images = next(images_of)
                x = (images.to(device, non_blocking=True).float() - mean) / std
                with autocast:
                    logits = dense_logits(teacher, x)
                logits = logits.float()
                if tuple(logits.shape[-2:]) != grid:
                    logits = F.interpolate(logits, size=grid, mode="bilinear", antialias=True)
                values, indices = logits.softmax(dim=1).topk(topk, dim=1)
                at = slice(row - start, row - start + len(images))
                rows["values"][at] = values.cpu().numpy().astype(np.float16)
                rows["indices"][at] = indices.cpu().numpy().astype(rows["indices"].dtype)
                bar.update(len(images))
            # the rows reach the disk before the record that says they are done
            f.seek(offset + start * dtype.itemsize)
            f.write(rows.tobytes())
            f.flush()
            os.fsync(f.fileno())
            own = merge_ranges([*own, [start, end]])
            write_json_atomic(own_path, {"rows": own})
            count.post(end - start)
        for _ in range(rounds - len(mine)):  # every rank joins every round's all-reduce
            count.post(0)
        count.collect()
    distributed.barrier()  # every chunk of every rank is written and recorded
    if rank == 0:
        write_json_atomic(out / PROGRESS_FILE, {"done": len(ids)})
        for path in rank_progress_files(out):
            path.unlink()
    distributed.barrier()
    return TokenLabelStore(out)
