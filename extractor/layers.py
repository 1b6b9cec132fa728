"""Binary layers: BinaryNet conv/linear, the sign activation, and the conv -> (pool) -> BN unit.

A binary unit is written input-side: `sign(x + b) -> binary conv/linear -> (pool) -> BN`. That is
the paper's order `conv -> (pool) -> BN -> sign` with the sign moved to the start of the next
unit, which Bi-Real style residuals need (the shortcut carries the real value, not its sign).

Two forms of the same unit:
- `BinaryConvBN` / `BinaryLinearBN` (training): latent real weights, batch norm with batch
  statistics while training. In eval mode they compute exactly what the folded form computes.
- `FoldedBinaryLayer` (inference, "reference path"): per layer only the ±1 weight (float tensor),
  the threshold b, and one per-channel scale/bias that folds BN and alpha:
      y = conv(sign(x + b), W_pm1);  out = y * scale + bias
      scale = gamma * alpha / sqrt(var + eps);  bias = beta - mean * gamma / sqrt(var + eps)
  A ±1 x ±1 convolution sums integers, exact in float32, so fast XNOR/popcount kernels can replace
  the conv and must produce the same numbers. Note the zero padding: padded positions are 0, not
  ±1, so a popcount kernel must correct the border sums (or count only valid taps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import fuse_conv_bn_eval

from extractor.quantizers import sign, sign_ste, weight_scale

__all__ = [
    "BinaryConv2d",
    "BinaryConvBN",
    "BinaryLinear",
    "BinaryLinearBN",
    "BinaryUnitBN",
    "FoldedBinaryLayer",
    "LearnableBias",
    "SignActivation",
    "affine",
    "binary_units",
    "fold_real_batch_norms",
    "is_fully_binary",
    "set_binarize",
]


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    """(C,) -> broadcastable over dim 1 of an `ndim`-d activation, in any memory format."""
    return v.view(1, -1, *([1] * (ndim - 2)))


def affine(y: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """Per-channel y * scale + bias: the one op both unit forms use, so they agree bit for bit."""
    return y * _per_channel(scale, y.dim()) + _per_channel(bias, y.dim())


def add_threshold(x: Tensor, b: Tensor) -> Tensor:
    """x + b per channel (Bi-Real/ReActNet learnable threshold before the sign)."""
    return x + _per_channel(b, x.dim())


class SignActivation(nn.Module):
    """sign(x) with the STE (BinaryNet); with `binary=False`, hardtanh(x) instead.

    hardtanh is the function whose derivative the STE uses, so switching it on and off (two-stage
    training: real activations first) changes only the forward quantization.
    """

    def __init__(self) -> None:
        super().__init__()
        self.binary = True

    def forward(self, x: Tensor) -> Tensor:
        return sign_ste(x) if self.binary else F.hardtanh(x)

    def extra_repr(self) -> str:
        return f"binary={self.binary}"


class LearnableBias(nn.Module):
    """Per-channel learnable threshold b, applied as x + b before the sign."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return add_threshold(x, self.bias)


class _BinaryWeightMixin:
    """Shared by BinaryConv2d and BinaryLinear: latent weights, sign in forward, optional alpha."""

    weight: Tensor
    binarize_weights: bool
    scale: bool
    has_latent_binary_weight = True  # clip_latent_weights_ looks for this flag

    def quantized_weight(self) -> Tensor:
        """sign_ste(W) when binarizing, else the real latent W (stage one of two-stage training)."""
        return sign_ste(self.weight) if self.binarize_weights else self.weight

    def alpha(self) -> Tensor | None:
        """XNOR-Net per-output-channel scale (O,), or None when unused."""
        return weight_scale(self.weight) if (self.scale and self.binarize_weights) else None


class BinaryConv2d(_BinaryWeightMixin, nn.Conv2d):
    """Conv2d whose forward uses sign(W) (times alpha_o if `scale`); no bias, BN follows."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        scale: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.binarize_weights = True
        self.scale = scale

    def forward_unscaled(self, x: Tensor) -> Tensor:
        """conv(x, sign(W)) without alpha; alpha is folded into the following BN."""
        return self._conv_forward(x, self.quantized_weight(), None)

    def forward(self, x: Tensor) -> Tensor:
        y = self.forward_unscaled(x)
        a = self.alpha()
        return y if a is None else y * _per_channel(a, y.dim())


class BinaryLinear(_BinaryWeightMixin, nn.Linear):
    """Linear layer whose forward uses sign(W) (times alpha_o if `scale`); no bias."""

    def __init__(self, in_features: int, out_features: int, *, scale: bool = False) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.binarize_weights = True
        self.scale = scale

    def forward_unscaled(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight())

    def forward(self, x: Tensor) -> Tensor:
        y = self.forward_unscaled(x)
        a = self.alpha()
        return y if a is None else y * _per_channel(a, y.dim())


class BinaryUnitBN(nn.Module):
    """[b +] [sign] -> binary op -> [pool] -> BN; eval mode uses the folded scale/bias."""

    op: BinaryConv2d | BinaryLinear
    bn: nn.BatchNorm1d | nn.BatchNorm2d

    def __init__(self, channels_in: int, *, binary_input: bool, threshold: bool) -> None:
        super().__init__()
        self.threshold = LearnableBias(channels_in) if threshold else None
        # A unit fed the real image (first layer) has no sign on its input.
        self.act = SignActivation() if binary_input else None
        self.pool: nn.Module | None = None

    @torch.no_grad()
    def folded_affine(self) -> tuple[Tensor, Tensor]:
        """(scale, bias), each (O,): BN running statistics and alpha folded together."""
        bn = self.bn
        assert bn.running_var is not None and bn.running_mean is not None
        g = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            g = bn.weight * g
        scale = g
        a = self.op.alpha()
        if a is not None:
            scale = g * a
        bias = -bn.running_mean * g
        if bn.bias is not None:
            bias = bn.bias + bias
        return scale.float().contiguous(), bias.float().contiguous()

    def forward(self, x: Tensor) -> Tensor:
        a = x if self.threshold is None else self.threshold(x)
        if self.act is not None:
            a = self.act(a)
        y = self.op.forward_unscaled(a)
        if self.pool is not None:
            y = self.pool(y)
        if self.training:
            alpha = self.op.alpha()
            if alpha is not None:
                y = y * _per_channel(alpha, y.dim())
            return self.bn(y)
        scale, bias = self.folded_affine()
        return affine(y, scale, bias)


class BinaryConvBN(BinaryUnitBN):
    """Binary conv unit; `pool` (e.g. max-pool in AlexNet) sits between the conv and BN."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        binary_input: bool = True,
        threshold: bool = False,
        scale: bool = False,
        pool: nn.Module | None = None,
    ) -> None:
        super().__init__(in_channels, binary_input=binary_input, threshold=threshold)
        self.op = BinaryConv2d(in_channels, out_channels, kernel_size, stride, padding, scale=scale)
        self.pool = pool
        self.bn = nn.BatchNorm2d(out_channels)


class BinaryLinearBN(BinaryUnitBN):
    """Binary fully connected unit (BinaryNet's fc layers): sign -> binary linear -> BN."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        binary_input: bool = True,
        threshold: bool = False,
        scale: bool = False,
    ) -> None:
        super().__init__(in_features, binary_input=binary_input, threshold=threshold)
        self.op = BinaryLinear(in_features, out_features, scale=scale)
        self.bn = nn.BatchNorm1d(out_features)


class FoldedBinaryLayer(nn.Module):
    """Inference form of a binary unit (the float reference path; kernels replace `forward`).

    Buffers: `weight` ±1 float32 with the training op's shape ((O, I, kh, kw) or (O, I)),
    `threshold` (I,) or absent, `scale` and `bias` (O,). Computes
    `affine(pool(op(sign(x + threshold), weight)), scale, bias)`.
    """

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        *,
        binary_input: bool,
        has_threshold: bool,
        stride: int = 1,
        padding: int = 0,
        pool: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.weight: Tensor
        self.scale: Tensor
        self.bias: Tensor
        self.kind = "conv" if len(weight_shape) == 4 else "linear"
        self.binary_input = binary_input
        self.stride = stride
        self.padding = padding
        self.pool = pool
        out_ch, in_ch = weight_shape[0], weight_shape[1]
        self.register_buffer("weight", torch.ones(weight_shape))
        self.register_buffer("scale", torch.ones(out_ch))
        self.register_buffer("bias", torch.zeros(out_ch))
        self.threshold: Tensor | None
        if has_threshold:
            self.register_buffer("threshold", torch.zeros(in_ch))
        else:
            self.threshold = None

    @classmethod
    def like(cls, unit: BinaryUnitBN) -> FoldedBinaryLayer:
        """An unfilled folded layer with `unit`'s geometry (works on a meta-device unit)."""
        op = unit.op
        conv = isinstance(op, BinaryConv2d)
        return cls(
            tuple(op.weight.shape),
            binary_input=unit.act is not None,
            has_threshold=unit.threshold is not None,
            stride=int(op.stride[0]) if conv else 1,  # type: ignore[index]
            padding=int(op.padding[0]) if conv else 0,  # type: ignore[index]
            pool=unit.pool,
        )

    @classmethod
    def from_unit(cls, unit: BinaryUnitBN) -> FoldedBinaryLayer:
        """Fold a trained unit: same ±1 weight, threshold and folded scale/bias."""
        op = unit.op
        layer = cls.like(unit)
        with torch.no_grad():
            layer.weight = sign(op.weight).float().contiguous()
            layer.scale, layer.bias = unit.folded_affine()
            if unit.threshold is not None:
                layer.threshold = unit.threshold.bias.detach().clone()
        return layer

    def forward(self, x: Tensor) -> Tensor:
        a = x if self.threshold is None else add_threshold(x, self.threshold)
        if self.binary_input:
            a = sign(a)
        if self.kind == "conv":
            y = F.conv2d(a, self.weight, None, self.stride, self.padding)
        else:
            y = F.linear(a, self.weight)
        if self.pool is not None:
            y = self.pool(y)
        return affine(y, self.scale, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.kind}, weight={tuple(self.weight.shape)}, binary_input={self.binary_input}, "
            f"threshold={self.threshold is not None}, stride={self.stride}, padding={self.padding}"
        )


def set_binarize(model: nn.Module, activations: bool = True, weights: bool = True) -> None:
    """Switch binary activations and/or binary weights on or off in every binary layer.

    Two-stage training (ReActNet): real weights with binary activations first, then both binary.
    Checkpoints can only be saved fully binary.
    """
    for m in model.modules():
        if isinstance(m, SignActivation):
            m.binary = activations
        elif isinstance(m, BinaryConv2d | BinaryLinear):
            m.binarize_weights = weights


def is_fully_binary(model: nn.Module) -> bool:
    """True when every sign activation and every binary layer's weights are binarized."""
    for m in model.modules():
        if isinstance(m, SignActivation) and not m.binary:
            return False
        if isinstance(m, BinaryConv2d | BinaryLinear) and not m.binarize_weights:
            return False
    return True


def binary_units(model: nn.Module) -> dict[str, BinaryUnitBN]:
    """Every binary unit of `model` (training form) by its module path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, BinaryUnitBN)}


def fold_real_batch_norms(model: nn.Module) -> None:
    """Fold every eval-mode BatchNorm2d that directly follows a real Conv2d into the conv.

    One op instead of two in the inference network, for the float reference and the fast path
    alike (both run these real convs through the same torch op, so they stay bit-identical to each
    other). The folded network equals the trained one up to float rounding.
    """
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in reversed(range(len(seq) - 1)):  # back to front: deleting re-numbers the rest
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv, bn)
                del seq[i + 1]
