"""Batched, seeded augmentation: one view per sample, seen identically by teacher and student.

"A good teacher is patient and consistent" (Beyer et al., CVPR 2022): teacher and student must
see the same crop (here the student's input is the teacher's crop, downsampled), and mixing
images (mixup/cutmix) with the teacher labelling the mixed image ("function matching") stretches
a small image set. All randomness comes from one `torch.Generator`, so a resumed run draws the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from extractor.distill.corpus import Source
from extractor.imaging import normalize

__all__ = ["full_views", "mix", "sample_views", "student_input"]


def _crop_grid(n: int, size: int, gen: torch.Generator, scale: tuple[float, float]) -> Tensor:
    """Affine sampling grids (n, size, size, 2) for random-resized crops with random flips."""
    area = torch.empty(n).uniform_(*scale, generator=gen)
    log_r = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    r = log_r.exp()
    w = (area * r).sqrt().clamp(max=1.0)  # half-extents in normalized [-1, 1] coordinates
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return F.affine_grid(theta, [n, 3, size, size], align_corners=False)


def _colour_jitter(x: Tensor, gen: torch.Generator, strength: float) -> Tensor:
    """Brightness/contrast/saturation jitter and 10% greyscale on 0..255 images (B, 3, H, W)."""
    n = x.shape[0]
    b = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * strength
    c = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * strength
    s = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * strength
    grey_p = torch.rand(n, 1, 1, 1, generator=gen)
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
    x = grey + (x - grey) * torch.where(grey_p < 0.1, torch.zeros_like(s), s)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * c
    return (x * b).clamp(0, 255)


def sample_views(
    sources: Sequence[Source],
    batch: int,
    size: int,
    gen: torch.Generator,
    *,
    scale: tuple[float, float] = (0.25, 1.0),
    jitter: float = 0.3,
) -> Tensor:
    """(batch, 3, size, size) float in 0..255: random sources by weight, random crops."""
    weights = torch.tensor([s.weight for s in sources], dtype=torch.float64)
    src = torch.multinomial(weights, batch, replacement=True, generator=gen)
    out = torch.empty(batch, 3, size, size)
    grid = _crop_grid(batch, size, gen, scale)
    for k, source in enumerate(sources):
        rows = (src == k).nonzero().flatten()
        if rows.numel() == 0:
            continue
        idx = torch.randint(len(source), (rows.numel(),), generator=gen)
        imgs = source.images[idx].float()
        if imgs.shape[1] == 1:
            imgs = imgs.expand(-1, 3, -1, -1)
        out[rows] = F.grid_sample(
            imgs, grid[rows], mode="bilinear", padding_mode="border", align_corners=False
        )
    return _colour_jitter(out, gen, jitter) if jitter > 0 else out


def mix(x: Tensor, gen: torch.Generator, p_mixup: float = 0.4, p_cutmix: float = 0.4) -> Tensor:
    """Mixup or cutmix of the batch with its reversal (lambda ~ U(0, 1)); or unchanged.

    Labels are not mixed: the teacher labels the mixed image itself (function matching).
    """
    u = float(torch.rand(1, generator=gen))
    lam = float(torch.rand(1, generator=gen))
    other = x.flip(0)
    if u < p_mixup:
        return x * lam + other * (1 - lam)
    if u < p_mixup + p_cutmix:
        _, _, h, w = x.shape
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy = int(torch.randint(h, (1,), generator=gen))
        cx = int(torch.randint(w, (1,), generator=gen))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
    return x


def full_views(source: Source, size: int) -> Tensor:
    """Deterministic whole-image views (N, 3, size, size) in 0..255, for validation."""
    imgs = source.images.float()
    if imgs.shape[1] == 1:
        imgs = imgs.expand(-1, 3, -1, -1)
    return F.interpolate(imgs, size=(size, size), mode="bilinear", antialias=True).clamp(0, 255)


def student_input(x: Tensor, pretrained_cfg: dict) -> Tensor:
    """The teacher's 0..255 view downsampled to the student's size and normalized for it."""
    side = int(pretrained_cfg["input_size"][-1])
    if x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
    return normalize(x / 255.0, pretrained_cfg)
