"""The baseline row: the same binary architecture trained from scratch on the target set only."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from extractor.imaging import preprocess
from extractor.models import DEFAULT_ARCH, create_model
from extractor.quantizers import clip_latent_weights_


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flip and a random shift by up to 1/8 of the side (reflect-padded)."""
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(-1)
    pad = x.shape[-1] // 8
    x = F.pad(x[None], (pad, pad, pad, pad), mode="reflect")[0]
    i, j = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
    return x[:, i : i + x.shape[1] - 2 * pad, j : j + x.shape[2] - 2 * pad]


def train_from_scratch(
    x_train: np.ndarray,
    y_train: np.ndarray,
    n_classes: int,
    *,
    epochs: int,
    seed: int = 0,
    lr: float = 2e-3,
    batch_size: int = 64,
    log=print,  # type: ignore[no-untyped-def]
) -> nn.Module:
    """BinaryNet-style: Adam on latent weights, clipped to [-1, 1] after every step."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = create_model(DEFAULT_ARCH)
    cfg = model.pretrained_cfg
    head = nn.Linear(model.feature_dim, n_classes)
    net = nn.ModuleDict({"body": model, "head": head})
    xs = torch.stack([preprocess(Image.fromarray(a), cfg) for a in x_train])
    ys = torch.from_numpy(y_train)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * ((len(xs) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(xs), generator=g)
        total = 0.0
        for i in range(0, len(xs), batch_size):
            idx = perm[i : i + batch_size]
            xb = torch.stack([_augment(xs[j], g) for j in idx])
            loss = F.cross_entropy(head(model.forward_features(xb)), ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            clip_latent_weights_(model)
            total += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == epochs - 1:
            log(f"  scratch epoch {epoch + 1}/{epochs} loss {total / len(xs):.3f}")
    net.eval()
    return net


@torch.inference_mode()
def predict_scores(net: nn.Module, images: np.ndarray, batch_size: int = 128) -> torch.Tensor:
    body, head = net["body"], net["head"]  # type: ignore[index]
    cfg = body.pretrained_cfg
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([preprocess(Image.fromarray(a), cfg) for a in images[i : i + batch_size]])
        out.append(head(body.forward_features(x)))
    return torch.cat(out)
