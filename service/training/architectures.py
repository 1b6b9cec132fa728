"""The three trainable heads as small modules, each exporting the registry's weight layout.

Layouts (service/heads/headfile.py reads them):
- float:  weight (C, D) float32, bias (C,)                  score = x @ weight.T + bias
- binary: weight_bits (C, ceil(D/8)) uint8, scale (C,), bias (C,)
          score = scale * (D - 2 * popcount(x_bits XOR weight_bits)) + bias
- mlp:    w1 (H, D), b1 (H,), w2 (C, H), b2 (C,)           score = relu(x @ w1.T + b1) @ w2.T + b2
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from extractor.quantizers import sign, sign_ste
from service.training.data import pack_bits


class FloatHead(nn.Module):
    """Multinomial logistic regression on (optionally z-scored) real features: paper's (b)."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)  # (D,)
        self.register_buffer("std", std)  # (D,)
        self.linear = nn.Linear(mean.numel(), n_classes)
        nn.init.zeros_(self.linear.weight)  # convex problem: any start reaches the same optimum
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, D) -> (B, C)
        return self.linear((x - self.mean) / self.std)

    def decay_parameters(self) -> list[Tensor]:
        return [self.linear.weight]

    @torch.no_grad()
    def export(self) -> dict[str, Tensor]:
        """Fold the standardisation in: W (x - m) / s + b = (W / s) x + (b - (W / s) m)."""
        weight = self.linear.weight / self.std
        bias = self.linear.bias - weight @ self.mean
        return {"weight": weight.float().contiguous(), "bias": bias.float().contiguous()}


class BinaryHead(nn.Module):
    """Binary weights on ±1 features with a learned per-class scale and bias: paper's (a).

    BinaryNet training (Hubara et al. 2016): the forward pass uses sign(W) of latent real weights,
    the backward pass the straight-through estimator, and the latent weights are clipped to
    [-1, 1] after every Adam step (`constrain_`). With x, sign(W) in {-1, +1}^D the dot product is
    D - 2 * popcount(x XOR w), so serving needs only XNOR and popcount, plus one float per class.
    """

    def __init__(self, init_latent: Tensor) -> None:
        super().__init__()
        n_classes, dim = init_latent.shape
        self.dim = dim
        self.latent = nn.Parameter(init_latent.clone())  # (C, D) in [-1, 1]
        self.scale = nn.Parameter(torch.full((n_classes,), 1.0 / math.sqrt(dim)))
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def dots(self, x_pm: Tensor) -> Tensor:  # (B, D) ±1 -> (B, C) integers in [-D, D]
        return x_pm @ sign_ste(self.latent).t()

    def forward(self, x_pm: Tensor) -> Tensor:
        return self.dots(x_pm) * self.scale + self.bias

    def decay_parameters(self) -> list[Tensor]:
        return [self.latent]

    @torch.no_grad()
    def constrain_(self) -> None:
        self.latent.clamp_(-1.0, 1.0)

    @torch.no_grad()
    def export(self) -> dict[str, Tensor]:
        return {
            "weight_bits": pack_bits(sign(self.latent)).contiguous(),
            "scale": self.scale.detach().float().contiguous(),
            "bias": self.bias.detach().float().contiguous(),
        }


class MlpHead(nn.Module):
    """One float hidden layer (ReLU) on real features: the paper's future work of retraining more
    than the last layer, kept floating point since it runs in software next to the head."""

    mean: Tensor
    std: Tensor

    def __init__(
        self, mean: Tensor, std: Tensor, hidden: int, n_classes: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        dim = mean.numel()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, n_classes)
        with torch.no_grad():  # He init from the job's generator, not the global RNG
            self.fc1.weight.copy_(torch.randn(hidden, dim, generator=generator) * (2 / dim) ** 0.5)
            self.fc1.bias.zero_()
            self.fc2.weight.copy_(torch.randn(n_classes, hidden, generator=generator) / hidden**0.5)
            self.fc2.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1((x - self.mean) / self.std)))

    def decay_parameters(self) -> list[Tensor]:
        return [self.fc1.weight, self.fc2.weight]

    @torch.no_grad()
    def export(self) -> dict[str, Tensor]:
        w1 = self.fc1.weight / self.std
        b1 = self.fc1.bias - w1 @ self.mean
        return {
            "w1": w1.float().contiguous(),
            "b1": b1.float().contiguous(),
            "w2": self.fc2.weight.detach().float().contiguous(),
            "b2": self.fc2.bias.detach().float().contiguous(),
        }
