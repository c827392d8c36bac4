"""Classification losses on soft targets (Mixup/CutMix, label smoothing, token labels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def one_hot_smooth(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Integer labels -> probability rows with ``smoothing`` spread uniformly over all classes."""
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, device=target.device)
    return out.scatter_(1, target.long().unsqueeze(1), 1.0 - smoothing + off)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum(target * log_softmax(logits))``; any leading shape.

    Computed in float32 so bf16/fp16 logits do not lose the loss's precision.
    """
    return torch.sum(-target.float() * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class SoftTargetCrossEntropy(nn.Module):
    """Cross entropy against probability targets ``[..., C]``."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(logits, target)
