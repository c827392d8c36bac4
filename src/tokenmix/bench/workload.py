"""What one benchmark measures: a model, an input size and a step (inference or training).

A :class:`Workload` is plain data (it travels to worker processes as JSON);
:meth:`Workload.prepare` builds the model once and returns a :class:`PreparedWorkload` whose
``step(variant)`` runs one batch on the fast or the reference path of the *same* model and
weights (see :func:`tokenmix.layers.set_reference_mode`), optionally in another autocast dtype
(``"fast@bf16"``), so that all variants can be interleaved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..layers import set_reference_mode

PATHS = ("fast", "reference")
DTYPES = {
    "fp32": torch.float32,
    "auto": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def parse_variant(variant: str, default_dtype: str) -> tuple[str, str]:
    """``"fast"``, ``"reference"`` or ``"PATH@DTYPE"`` (e.g. ``"fast@bf16"``) -> (path, dtype).

    A variant without ``@`` runs in the workload's dtype. Variants let one run time, say, the
    fast path in bf16 against the reference path in float32 on the same weights.
    """
    path, _, dtype = variant.partition("@")
    dtype = dtype or default_dtype
    if path not in PATHS or dtype not in DTYPES:
        raise ValueError(
            f"variant {variant!r}: expected PATH or PATH@DTYPE with PATH in {PATHS} "
            f"and DTYPE in {sorted(DTYPES)}"
        )
    return path, dtype


@dataclass(frozen=True)
class Workload:
    """One benchmark configuration.

    Attributes:
        model: registered architecture name.
        resolution: square input size; models are built for it (filters stored at that size).
        batch: images per step.
        train: time forward + backward + optimizer step instead of inference.
        dtype: ``fp32``, or ``bf16``/``fp16`` autocast (weights stay float32; FFTs run in
            float32 inside the mixers).
        compile: wrap the model in ``torch.compile``.
        channels_last: model and input in ``torch.channels_last`` memory format.
        device: ``cpu`` or ``cuda`` (``cuda:N``).
    """

    model: str
    resolution: int
    batch: int = 8
    train: bool = False
    dtype: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.resolution < 32 or self.batch < 1:
            raise ValueError(f"need resolution >= 32 and batch >= 1, got {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def prepare(self) -> PreparedWorkload:
        return PreparedWorkload(self)


class PreparedWorkload:
    """A built model, a batch and the step function of a :class:`Workload`."""

    def __init__(self, workload: Workload) -> None:
        from ..models import create_model

        self.workload = workload
        self.device = torch.device(workload.device)
        torch.manual_seed(0)
        model = create_model(workload.model, img_size=workload.resolution)
        model = model.to(self.device).train(workload.train)
        x = torch.randn(workload.batch, 3, workload.resolution, workload.resolution)
        if workload.channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.model = model
        self.inputs = x.to(self.device)
        self.targets = torch.randint(0, model.num_classes, (workload.batch,), device=self.device)
        self.runner: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(model) if workload.compile else model
        )
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None
        if workload.train:
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def _autocast(self, dtype: str) -> contextlib.AbstractContextManager[Any]:
        """Autocast for a dtype request: bf16 without bf16 units (or ``auto`` there) runs
        float32 with a warning (``tokenmix.kernels.resolve_amp``) instead of emulated."""
        resolved = kernels.resolve_amp(dtype, self.device)
        if resolved is None:
            return contextlib.nullcontext()
        return kernels.autocast(self.device, resolved)

    def step(self, variant: str = "fast") -> None:
        """One batch on ``variant`` (``fast``, ``reference``, or ``PATH@DTYPE``)."""
        path, dtype = parse_variant(variant, self.workload.dtype)
        set_reference_mode(self.model, path == "reference")
        if not self.workload.train:
            with torch.inference_mode(), self._autocast(dtype):
                self.runner(self.inputs)
            return
        assert self.optimizer is not None
        with self._autocast(dtype):
            loss = F.cross_entropy(self.runner(self.inputs).float(), self.targets)
        if dtype == "fp16" and self.device.type == "cuda":  # fp16 gradients need loss scaling
            if self.scaler is None:
                self.scaler = torch.amp.GradScaler(self.device.type)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def count_model(name: str, resolution: int) -> tuple[int, int]:
    """(parameters, MACs per image with FFTs) of ``name`` at ``resolution``, on the meta device."""
    from ..models import create_model
    from .flops import count_macs

    with torch.device("meta"):
        model: nn.Module = create_model(name, img_size=resolution)
    params = sum(p.numel() for p in model.parameters())
    return params, count_macs(model, (3, resolution, resolution))
