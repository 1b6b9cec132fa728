"""AdamW written out, instead of `torch.optim`.

Constructing any `torch.optim` optimizer imports `torch._dynamo` (and sympy) on first use: tens of
seconds on a busy machine, paid by every fresh worker process, and two threads doing that first
import at once stall each other. The update below is the same decoupled-weight-decay Adam
(Loshchilov & Hutter 2019; Kingma & Ba 2015), which the paper found best for binary networks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class AdamW:
    """p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), per parameter group."""

    def __init__(
        self,
        groups: Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.groups = [
            {"params": list(g["params"]), "weight_decay": g.get("weight_decay", 0.0)}
            for g in groups
        ]
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        correction1 = 1 - b1**self.t
        correction2 = 1 - b2**self.t
        step_size = self.lr / correction1
        for g in self.groups:
            wd = g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                m, v = self.state.setdefault(id(p), (torch.zeros_like(p), torch.zeros_like(p)))
                if wd:
                    p.mul_(1 - self.lr * wd)
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v / correction2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-step_size)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay only what `model.decay_parameters()` names (weights), never biases or scales."""
    decay = {id(p) for p in model.decay_parameters()}  # type: ignore[operator]
    params = list(model.parameters())
    return [
        {"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
    ]


__all__ = ["AdamW", "parameter_groups"]
