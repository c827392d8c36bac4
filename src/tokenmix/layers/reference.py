"""The reference path: every layer in the operation order of the official code.

Each layer in :mod:`tokenmix.layers` that has a faster implementation keeps a second forward
that follows the official code line by line (same operations, same order, same dtypes):

- okojoalg/dfformer@2b757c5 ``models/dfformer.py``: ``LayerNormGeneral``, ``StarReLU``, ``Mlp``,
  ``DynamicFilter`` (complex ``einsum`` filter mixture), ``GlobalFilter``, ``SepConv``;
- sail-sg/metaformer@64c534a ``metaformer_baselines.py``: ``Attention`` (``softmax(q k^T * s) v``);
- zihangJiang/TokenLabeling@9dbfd59 ``tlt/models/layers.py``: LV-ViT attention
  (``softmax((q * s) k^T) v``).

It serves two purposes: tests use it as the oracle that the fast path must match (forward and
backward, see ``tests/test_fastpath.py``), and ``tokenmix bench`` times both paths on the same
weights in one run, so the speed-up over the official implementation is a measured ratio.

Switch a whole model with :func:`set_reference_mode` or, temporarily, :func:`reference_mode`.
The switch changes no parameter or buffer: checkpoints are shared by both paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class DualPath(nn.Module):
    """A layer with two implementations of one function: ``forward_fast`` and ``forward_reference``.

    ``reference`` (a plain attribute, so ``torch.compile`` guards on it) picks the path at call
    time. Subclasses implement both methods; ``forward`` only dispatches.
    """

    reference: bool = False

    def extra_repr(self) -> str:
        """The kernels the layer resolved at construction (``tokenmix.kernels``)."""
        chosen = getattr(self, "kernels", None)
        if not chosen:
            return ""
        return "kernels=" + ",".join(f"{family}:{option}" for family, option in chosen.items())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.reference:
            return self.forward_reference(*args, **kwargs)
        return self.forward_fast(*args, **kwargs)

    def forward_fast(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def forward_reference(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def set_reference_mode(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Run every :class:`DualPath` layer of ``model`` on its reference (official-order) path.

    Args:
        model: any module; layers without two paths are left alone.
        enabled: ``False`` switches back to the fast path (the default of every layer).

    Returns:
        ``model`` itself, for chaining: ``set_reference_mode(create_model(name))``.
    """
    for module in model.modules():
        if isinstance(module, DualPath):
            module.reference = enabled
    return model


def uses_reference_path(model: nn.Module) -> bool:
    """True when any layer of ``model`` is switched to its reference path."""
    return any(isinstance(m, DualPath) and m.reference for m in model.modules())


@contextmanager
def reference_mode(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Temporarily switch ``model`` to the reference path (or the fast one with ``enabled=False``).

    The previous choice of every layer is restored on exit, also after an exception.
    """
    previous = {m: m.reference for m in model.modules() if isinstance(m, DualPath)}
    set_reference_mode(model, enabled)
    try:
        yield model
    finally:
        for module, value in previous.items():
            module.reference = value


# --- official-order building blocks ---------------------------------------------------------
def official_layer_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``LayerNormGeneral`` over the last dimension: centre, biased variance, divide, scale."""
    c = x - x.mean(-1, keepdim=True)
    s = c.pow(2).mean(-1, keepdim=True)
    x = c / torch.sqrt(s + eps)
    return x * weight if weight is not None else x


def official_star_relu(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``StarReLU``: ``scale * relu(x) ** 2 + bias``."""
    return scale * F.relu(x) ** 2 + bias


def official_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, drop_rate: float = 0.0
) -> torch.Tensor:
    """MetaFormer attention core: ``softmax((q @ k^T) * scale) @ v`` (scale after the product).

    ``drop_rate``: attention dropout (pass 0 outside training).
    """
    attn = (q @ k.transpose(-2, -1)) * scale
    attn = attn.softmax(dim=-1)
    return F.dropout(attn, drop_rate) @ v


def official_attention_query_scaled(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, drop_rate: float = 0.0
) -> torch.Tensor:
    """LV-ViT (TokenLabeling) attention core: ``softmax((q * scale) @ k^T) @ v``.

    ``drop_rate``: attention dropout (pass 0 outside training).
    """
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn.softmax(dim=-1)
    return F.dropout(attn, drop_rate) @ v
