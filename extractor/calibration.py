"""Batch-norm calibration on procedural images, and the random-init extractor built with it.

A randomly initialised binary network has BN running statistics of (0, 1), far from what its
layers really produce; recomputing them on a few synthetic images makes the features of a
random-init stand-in non-degenerate, and is also useful after changing the training schedule.
`write_random_init` (`headhub extractor random-init`) packs such a stand-in: an extractor to serve
where no distilled checkpoint exists yet.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extractor.checkpoint import save_checkpoint
from extractor.imaging import normalize
from extractor.models import DEFAULT_ARCH, create_model

__all__ = ["calibrate_bn", "procedural_images", "write_random_init"]


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


def write_random_init(path: str | Path, seed: int = 0) -> str:
    """Write the random-init stand-in: seeded weights, BN calibrated on procedural images.

    Deterministic (no date in the provenance), so the same code and seed give the same id.
    """
    torch.manual_seed(seed)
    model: Any = create_model(DEFAULT_ARCH)
    size = model.pretrained_cfg["input_size"][-1]
    n_images = 128
    calibrate_bn(model, normalize(procedural_images(n_images, size, seed), model.pretrained_cfg))
    provenance = {
        "kind": "random-init",
        "note": "RANDOM-INIT STAND-IN, not trained: seeded random weights, BN statistics "
        "calibrated on procedural images; replace with a distilled checkpoint",
        "seed": seed,
        "teacher": None,
        "corpus": f"{n_images} procedural images (BN calibration only)",
        "steps": 0,
        "command": f"headhub extractor random-init --seed {seed}",
        "date": None,
    }
    return save_checkpoint(model, path, provenance)
