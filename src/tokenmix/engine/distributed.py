"""Process-group setup for ``torchrun`` and the few collectives the engine needs.

``torchrun --nproc-per-node N -m tokenmix.cli.main train ...`` sets ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``; without them the run is a single process and every helper here is a
no-op. The backend is NCCL on CUDA and Gloo on CPU. Only rank 0 writes files and logs (except
``tokenmix relabel``, where every rank writes its own rows of the one label file).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank among ``world_size`` and the device it drives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error, not a fallback."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "device cuda was asked for (train.device / --device) but no CUDA device is "
                "available; use cpu or auto"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group ``torchrun`` describes, or describe a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place (identity for a single process)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group; ``(0, 1)`` without one.

    For library functions that are handed an already-joined group (or none) rather than
    calling :func:`init_distributed` themselves.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device() -> torch.device:
    """Where tensors for a collective must live: the current CUDA device under NCCL, else CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_async(t: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Start a sum over processes in place; the returned function waits for it and returns ``t``.

    Lets a process post its count and keep working, collecting the total one step later, so
    no process waits for the slowest at every step (identity for a single process).
    """
    if not dist.is_initialized():
        return lambda: t
    work = dist.all_reduce(t, op=dist.ReduceOp.SUM, async_op=True)

    def wait() -> torch.Tensor:
        work.wait()
        return t

    return wait


def align_grad_strides(model: torch.nn.Module) -> None:
    """Make every gradient arrive in its parameter's exact strides, as DDP's reducer expects.

    Why: where a parameter has a size-1 dimension, a backward may produce its gradient with
    another stride in that dimension (the depthwise ``[C, 1, k, k]`` conv weights behind a
    channels-last input; 1x1 filter grids). Autograd keeps such a gradient as it is (the memory
    order is the same), but the reducer compares strides exactly and warns "Grad strides do not
    match bucket view strides" on every run. A hook re-labels those strides: a view of the same
    memory, no copy, the same values.
    """
    for param in model.parameters():
        if param.requires_grad and 1 in param.shape:
            param.register_hook(_restrider(param.shape, param.stride()))


def _restrider(
    size: torch.Size, stride: tuple[int, ...]
) -> Callable[[torch.Tensor], torch.Tensor | None]:
    def hook(grad: torch.Tensor) -> torch.Tensor | None:
        if grad.stride() == stride or any(
            a != b and n != 1 for a, b, n in zip(grad.stride(), stride, size, strict=True)
        ):
            return None  # already right, or a real layout difference (autograd copies those)
        return grad.as_strided(size, stride, grad.storage_offset())

    return hook
