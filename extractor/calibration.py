"""Batch-norm calibration on procedural images.

A randomly initialised binary network has BN running statistics of (0, 1), far from what its
layers really produce; recomputing them on a few synthetic images makes the features of a
random-init stand-in non-degenerate, and is also useful after changing the training schedule.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["calibrate_bn", "normalize", "procedural_images"]


def procedural_images(n: int, size: int, seed: int = 0) -> Tensor:
    """(n, 3, size, size) RGB in [0, 1]: smooth colour fields, oriented gratings and a disc."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    theta = torch.rand(n, 1, 1, generator=g) * math.pi
    freq = 2 + torch.rand(n, 1, 1, generator=g) * 14
    grating = torch.sin(freq * (xx * torch.cos(theta) + yy * torch.sin(theta)) * math.pi)
    colour = torch.rand(n, 3, 1, 1, generator=g)
    img = img + 0.35 * grating.unsqueeze(1) * (colour - 0.5)
    centre = torch.rand(n, 2, 1, 1, generator=g) * 1.4 - 0.7
    radius = 0.15 + torch.rand(n, 1, 1, generator=g) * 0.4
    disc = ((xx - centre[:, 0]) ** 2 + (yy - centre[:, 1]) ** 2 < radius**2).unsqueeze(1)
    img = torch.where(disc, torch.rand(n, 3, 1, 1, generator=g).expand_as(img), img)
    return img.clamp_(0.0, 1.0)


def normalize(images: Tensor, pretrained_cfg: dict[str, Any]) -> Tensor:
    """[0, 1] RGB -> network input with the model's mean/std."""
    mean = torch.tensor(pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pretrained_cfg["std"]).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def calibrate_bn(model: nn.Module, inputs: Tensor, batch_size: int = 32) -> None:
    """Replace every BN's running mean/var by their average over `inputs`; leaves model in eval."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over all calibration batches
    model.train()
    try:
        for start in range(0, inputs.shape[0], batch_size):
            model.forward_features(inputs[start : start + batch_size])  # type: ignore[operator]
    finally:
        for bn, mom in zip(bns, momenta, strict=True):
            bn.momentum = mom
        model.eval()
