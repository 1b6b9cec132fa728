"""AdamW and L-BFGS written out, instead of `torch.optim`.

Constructing any `torch.optim` optimizer imports `torch._dynamo` (and sympy) on first use: tens of
seconds on a busy machine, paid by every fresh worker process, and two threads doing that first
import at once stall each other. The update below is the same decoupled-weight-decay Adam
(Loshchilov & Hutter 2019; Kingma & Ba 2015), which the paper found best for binary networks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


def lbfgs(
    f: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    max_iter: int,
    history: int = 20,
    gtol: float = 1e-5,
    ftol: float = 1e-9,
) -> torch.Tensor:
    """Minimise a smooth function of the flat vector `x`; `f(x) -> (value, gradient)`.

    Limited-memory BFGS (Nocedal & Wright, algorithm 7.4: two-loop recursion, initial Hessian
    scaled by s'y / y'y) with a backtracking Armijo line search, which suffices for the convex
    losses it serves. Stops after `max_iter` iterations, when the largest gradient entry is below
    `gtol`, or when the value changes by less than `ftol` relative.
    """
    fx, g = f(x)
    pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (s, y, 1 / y's), newest last
    for _ in range(max_iter):
        if float(g.abs().max()) < gtol:
            break
        q = g.clone()
        alphas = []
        for s, y, rho in reversed(pairs):
            a = rho * float(s @ q)
            q -= a * y
            alphas.append(a)
        if pairs:
            s, y, rho = pairs[-1]
            q /= rho * float(y @ y)  # initial Hessian: s'y / y'y
        else:
            q /= max(1.0, float(g.norm()))  # first step: a short steepest descent
        for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
            q += (a - rho * float(y @ q)) * s
        d, slope, t = -q, -float(g @ q), 1.0
        if slope >= 0:  # not a descent direction (numerical trouble): restart from the gradient
            pairs.clear()
            d, slope = -g, -float(g @ g)
        for _ in range(40):
            fn, gn = f(x + t * d)
            if float(fn) <= float(fx) + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break  # no decrease found: at the optimum to float precision
        s, y = t * d, gn - g
        x, change = x + s, abs(float(fx) - float(fn))
        fx, g = fn, gn
        sy = float(s @ y)
        if sy > 1e-10:
            pairs.append((s, y, 1.0 / sy))
            if len(pairs) > history:
                del pairs[0]
        if change <= ftol * max(1.0, abs(float(fx))):
            break
    return x


__all__ = ["AdamW", "lbfgs", "parameter_groups"]
