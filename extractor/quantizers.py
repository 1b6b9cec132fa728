"""Binarization quantizers (BinaryNet, larq-style: a pure function plus a thin module).

References:
- Courbariaux, Hubara, Soudry, El-Yaniv, Bengio. "Binarized Neural Networks: Training Deep Neural
  Networks with Weights and Activations Constrained to +1 or -1", 2016 (BinaryNet).
- Rastegari, Ordonez, Redmon, Farhadi. "XNOR-Net: ImageNet Classification Using Binary
  Convolutional Neural Networks", ECCV 2016 (per-output-channel scaling alpha = mean|W|).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "SteSign",
    "WeightBinarizer",
    "binarize_weight",
    "clip_latent_weights_",
    "sign",
    "sign_ste",
    "weight_scale",
]


def sign(x: Tensor) -> Tensor:
    """Deterministic binarization, sign(x) = +1 if x >= 0 else -1 (so sign(0) = +1).

    torch.sign maps 0 to 0, which is not a binary value; this never does.
    """
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _SignSTE(torch.autograd.Function):
    """sign forward; straight-through estimator backward, g_x = g_y * 1_{|x| <= 1}."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)


def sign_ste(x: Tensor) -> Tensor:
    """Binarize with the straight-through estimator (BinaryNet, Hubara et al. 2016, eq. 1-4).

    Forward:  q = sign(x) in {-1, +1}, sign(0) = +1.
    Backward: dL/dx = dL/dq * 1_{|x| <= 1}, the derivative of hardtanh(x) = clip(x, -1, 1):
    the gradient is cancelled where |x| > 1, which keeps saturated units from drifting.
    """
    return _SignSTE.apply(x)


def weight_scale(w: Tensor) -> Tensor:
    """XNOR-Net scaling alpha_o = mean |W_o| over each output channel o; shape (O,).

    Detached: alpha is a statistic of the latent weights, not a path for their gradient
    (as in Bi-Real Net and ReActNet).
    """
    return w.detach().abs().flatten(1).mean(dim=1)


def binarize_weight(w: Tensor, scale: bool = False) -> Tensor:
    """Binary weights for the forward pass: W_b = sign(W) (times alpha_o if `scale`).

    The latent real-valued W receives the STE gradient (BinaryNet section 1.3); the trainer keeps
    it inside [-1, 1] with `clip_latent_weights_` after every optimizer step.
    """
    wb = sign_ste(w)
    if scale:
        wb = wb * weight_scale(w).view(-1, *([1] * (w.dim() - 1)))
    return wb


@torch.no_grad()
def clip_latent_weights_(model: nn.Module) -> int:
    """Clip the latent weights of every binary layer in `model` to [-1, 1], in place.

    BinaryNet: W <- clip(W, -1, 1) after each update, otherwise latent weights grow without
    bound and never flip sign again. Returns the number of tensors clipped (for tests/logging).
    """
    n = 0
    for module in model.modules():
        if getattr(module, "has_latent_binary_weight", False):
            getattr(module, "weight").clamp_(-1.0, 1.0)  # noqa: B009  (typed as Tensor|Module)
            n += 1
    return n


class SteSign(nn.Module):
    """Module form of `sign_ste`."""

    def forward(self, x: Tensor) -> Tensor:
        return sign_ste(x)


class WeightBinarizer(nn.Module):
    """Module form of `binarize_weight`, with the XNOR-Net scale as an option (off by default)."""

    def __init__(self, scale: bool = False) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, w: Tensor) -> Tensor:
        return binarize_weight(w, scale=self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
