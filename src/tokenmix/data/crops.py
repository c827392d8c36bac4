"""Batched random-resized-crop and flip as boxes, applied with ``grid_sample``.

One implementation serves images and dense label maps: :func:`sample_rrc_boxes` draws the
crop boxes once, and :func:`crop_resize` applies the same boxes (and flips) to any tensor
covering the same image, whatever its resolution. That is what keeps token labels aligned with
the pixels they describe (Token Labeling, Jiang et al., NeurIPS 2021), and it runs on the
training device for a whole batch at once.

Boxes are ``[B, 4]`` float tensors ``(x0, y0, x1, y1)`` in normalised image coordinates
(0 = left/top edge, 1 = right/bottom edge), so they do not depend on the tensor's resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample_rrc_boxes(
    batch: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    image_aspect: float = 1.0,
    attempts: int = 10,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw RandomResizedCrop boxes (Szegedy et al.) for ``batch`` images.

    Follows the usual rule: area fraction uniform in ``scale``, aspect ratio log-uniform in
    ``ratio`` (width / height, in pixels), up to ``attempts`` tries for a box that fits, else a
    central crop with the ratio clamped. ``image_aspect`` is the source width / height.
    """
    g = generator
    area = torch.empty(batch, attempts).uniform_(scale[0], scale[1], generator=g)
    log_r = torch.empty(batch, attempts).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=g
    )
    r = torch.exp(log_r) / image_aspect  # ratio in normalised units
    w = torch.sqrt(area * r)
    h = torch.sqrt(area / r)
    fits = (w <= 1) & (h <= 1)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((batch,), -1))
    rows = torch.arange(batch)
    w_sel = w[rows, first.clamp(min=0)]
    h_sel = h[rows, first.clamp(min=0)]
    # fallback: the whole image, or its largest central box with the ratio clamped into range
    fb_w, fb_h = 1.0, 1.0
    if image_aspect < ratio[0]:
        fb_h = image_aspect / ratio[0]
    elif image_aspect > ratio[1]:
        fb_w = ratio[1] / image_aspect
    missing = first < 0
    w_sel = torch.where(missing, torch.full_like(w_sel, fb_w), w_sel)
    h_sel = torch.where(missing, torch.full_like(h_sel, fb_h), h_sel)
    u = torch.rand(batch, 2, generator=g)
    x0 = torch.where(missing, (1 - w_sel) / 2, u[:, 0] * (1 - w_sel))
    y0 = torch.where(missing, (1 - h_sel) / 2, u[:, 1] * (1 - h_sel))
    return torch.stack([x0, y0, x0 + w_sel, y0 + h_sel], dim=1).to(device)


def shift_boxes(
    boxes: torch.Tensor,
    pixels: int,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Move each box by a whole number of source pixels, uniform in ``[-pixels, pixels]`` per
    axis (``size`` is the source ``(H, W)``): random translation, the pad-and-crop of CIFAR
    trainers. Whole pixels keep pixel centres on pixel centres, so an unscaled box copies
    pixels exactly; the part outside the image reads the border (:func:`crop_resize`)."""
    shift = torch.randint(-pixels, pixels + 1, (boxes.shape[0], 2), generator=generator)
    shift = shift.to(boxes) / boxes.new_tensor([size[1], size[0]])  # (dx, dy) normalised
    return boxes + shift.repeat(1, 2)


def full_boxes(batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boxes covering the whole image (no crop)."""
    return torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device).expand(batch, 4).contiguous()


def crop_resize(
    x: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int],
    flip: torch.Tensor | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Crop ``boxes`` out of ``x`` (``[B, C, H, W]``), resize to ``size``, mirror where ``flip``.

    Pixel centres are respected (``align_corners=False``): the box edges map to the output
    edges, so a box of ``(0, 0, 1, 1)`` at the input size returns ``x`` unchanged. Samples
    outside the image (never produced by :func:`sample_rrc_boxes`) read the border value.
    """
    b = x.shape[0]
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    x0, y0, x1, y1 = boxes.unbind(1)
    sx, sy = x1 - x0, y1 - y0
    if flip is not None:
        sx = torch.where(flip.to(x.device), -sx, sx)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = x0 + x1 - 1
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = y0 + y1 - 1
    grid = F.affine_grid(theta, [b, x.shape[1], size[0], size[1]], align_corners=False)
    src = x.float()
    return F.grid_sample(src.float(), grid, mode=mode, padding_mode="border", align_corners=False)
