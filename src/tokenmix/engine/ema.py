"""Exponential moving average of the weights (Polyak averaging), as timm's ``ModelEmaV2``.

Built on :class:`torch.optim.swa_utils.AveragedModel` with its EMA update (one fused
``lerp`` per dtype group), buffers included so BatchNorm statistics are averaged too. The
first update copies the model; after that ``ema = decay * ema + (1 - decay) * model``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def create_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` (unwrapped, before ``torch.compile``) on the same device.

    The copy is frozen and in eval mode: it is only ever evaluated and checkpointed.
    """
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.eval()
    ema.requires_grad_(False)
    return ema


def load_ema(ema: AveragedModel, weights: dict[str, torch.Tensor], num_updates: int) -> None:
    """Restore the averaged weights and how many updates they hold (0 means "copy next")."""
    ema.module.load_state_dict(weights)
    ema.n_averaged.fill_(num_updates)
