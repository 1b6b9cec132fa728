"""Bit-packed binary layer ops: the compiled XOR-popcount kernels, or a pure-PyTorch fallback.

Layout: sign bits are packed along channels into 64-bit words (carried as int64 tensors), bit j of
word q = channel 64q + j, bits past C are 0. This is numpy `packbits(bitorder="little")` order
read as little-endian words, so `extractor.packing.pack_signs` bytes view straight as words.

For ±1 vectors a, w of length K: a . w = K - 2 * popcount(a XOR w). A conv's zero padding adds
0 to the reference's float conv, so padded taps are excluded from K and from the popcount.

Every op computes exactly what the float reference computes (`layers.FoldedBinaryLayer` plus the
Bi-Real residual): float(dot), then `* scale`, then `+ bias`, then `residual +`, each rounded once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BinaryConvPlan",
    "KernelError",
    "PreparedWeight",
    "avg_pool2d",
    "backend",
    "binary_conv2d",
    "binary_linear",
    "flip_words",
    "instruction_set",
    "integer_thresholds",
    "or_pool",
    "pack_conv_weight",
    "pack_linear_weight",
    "pack_nchw",
    "pack_rows",
    "packed_dot",
    "pooled_size",
    "set_instruction_set",
    "supported_instruction_sets",
    "to_contiguous",
    "unpack_words",
    "words_for",
]

log = logging.getLogger(__name__)


class KernelError(ValueError):
    """Bad shapes/dtypes for a binary op, or an instruction set this CPU lacks."""


def _load_native():  # type: ignore[no-untyped-def]
    """The compiled module, or None. torch is imported first so both share one libgomp."""
    if os.environ.get("HEADHUB_KERNELS", "").lower() == "torch":
        return None
    try:
        from extractor.kernels import _bitops  # type: ignore[attr-defined]
    except ImportError as exc:
        log.warning("XOR-popcount extension unavailable (%s); using the PyTorch fallback", exc)
        return None
    return _bitops


_native = _load_native()
_ISAS = ("avx512_vpopcntdq", "avx2", "popcnt", "portable")


def backend() -> str:
    """'native' when the compiled kernels run, 'torch' for the pure-PyTorch fallback."""
    return "native" if _native is not None else "torch"


def instruction_set() -> str:
    """Instruction set of the active popcount kernel, e.g. 'avx2'; 'torch' for the fallback."""
    return _native.isa() if _native is not None else "torch"


def supported_instruction_sets() -> list[str]:
    """Kernel variants this CPU can run, best first (empty for the fallback)."""
    return [] if _native is None else [s for s in _ISAS if _native.cpu_supports(s)]


def set_instruction_set(name: str) -> None:
    """Force a kernel variant (tests, benchmarks); raises KernelError if the CPU lacks it."""
    if _native is None:
        raise KernelError("the compiled kernels are not available")
    try:
        _native.set_isa(name)
    except ValueError as exc:
        raise KernelError(str(exc)) from exc


def words_for(channels: int) -> int:
    """64-bit words per packed vector of `channels` signs."""
    return (channels + 63) // 64


def _threads() -> int:
    return torch.get_num_threads()


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise KernelError(msg)


# ---- layout ------------------------------------------------------------------------------------


def _out(out: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A caller's reusable buffer (checked) or a fresh one."""
    if out is None:
        return torch.empty(shape, dtype=dtype)
    _check(
        tuple(out.shape) == shape and out.dtype == dtype and out.is_contiguous(),
        f"out must be a contiguous {dtype} tensor of shape {shape}",
    )
    return out


def to_contiguous(x: Tensor, out: Tensor | None = None) -> Tensor:
    """(N, C, H, W) in NCHW-contiguous memory (a copy only if it is not already)."""
    if x.is_contiguous():
        return x
    out = _out(out, tuple(x.shape), x.dtype)
    return out.copy_(x)


def pooled_size(size: int, kernel: int, stride: int, ceil_mode: bool) -> int:
    """Output length of an unpadded pool, torch's rule (a ceil-mode window starts in the input)."""
    span = size - kernel
    n = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (n - 1) * stride >= size:
        n -= 1
    return n


def avg_pool2d(
    x: Tensor,
    kernel: int,
    stride: int,
    ceil_mode: bool,
    out: Tensor | None = None,
    prelu: Tensor | None = None,
) -> Tensor:
    """Unpadded average pool (count = valid elements), any memory format -> NCHW-contiguous.

    Values equal `F.avg_pool2d(x, kernel, stride, 0, ceil_mode, count_include_pad=False)`:
    the same float sum order and one division. With `prelu` (C weights) it pools `F.prelu(x,
    prelu)` without materializing it.
    """
    _check(x.dim() == 4, "avg_pool2d: (N, C, H, W) expected")
    n, c, h, w = x.shape
    ho, wo = (pooled_size(s, kernel, stride, ceil_mode) for s in (h, w))
    _check(ho > 0 and wo > 0, "input smaller than the pooling window")
    _check(prelu is None or prelu.shape == (c,), "prelu weights must have shape (C,)")
    if _native is None or x.dtype != torch.float32:
        if prelu is not None:
            x = F.prelu(x, prelu)
        y = F.avg_pool2d(x, kernel, stride, 0, ceil_mode, count_include_pad=False)
        return y.contiguous()
    out = _out(out, (n, c, ho, wo), torch.float32)
    a = None if prelu is None else prelu.detach().float().contiguous().numpy()
    _native.avgpool(x.numpy(), kernel, stride, out.numpy(), _threads(), a)
    return out


# ---- packing -----------------------------------------------------------------------------------

_SHIFTS = torch.arange(64, dtype=torch.int64)


def _pack_torch(x_nhwc: Tensor, threshold: Tensor | None) -> Tensor:
    """Reference packing: (N, H, W, C) float -> (N, H, W, Cw) int64, bit = (x + t) >= 0."""
    n, h, w, c = x_nhwc.shape
    v = x_nhwc + threshold if threshold is not None else x_nhwc
    bits = (v >= 0).to(torch.int64)
    pad = words_for(c) * 64 - c
    if pad:
        bits = F.pad(bits, (0, pad))
    bits = bits.reshape(n, h, w, -1, 64) << _SHIFTS
    return bits.sum(-1)  # distinct powers of two: the sum is the bitwise or (2^63 wraps to sign)


def pack_nchw(x: Tensor, threshold: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """(N, C, H, W) float32, any memory format -> (N, H, W, ceil(C/64)) int64 of sign(x + t) bits.

    Channels-last input is read contiguously; NCHW input is read with strides (no copy).
    """
    _check(x.dim() == 4 and x.dtype == torch.float32, "pack_nchw: float32 (N, C, H, W) expected")
    n, c, h, w = x.shape
    nhwc = x.permute(0, 2, 3, 1)
    if threshold is not None:
        _check(threshold.shape == (c,), "threshold must have shape (C,)")
        threshold = threshold.float().contiguous()
    if _native is None:
        return _pack_torch(nhwc, threshold)
    out = _out(out, (n, h, w, words_for(c)), torch.int64)
    t = None if threshold is None else threshold.numpy()
    _native.pack(nhwc.numpy(), t, out.numpy(), _threads())
    return out


def pack_rows(x: Tensor, threshold: Tensor | None = None) -> Tensor:
    """(M, K) float32 -> (M, ceil(K/64)) int64 sign bits (binary linear inputs)."""
    _check(x.dim() == 2, "pack_rows: (M, K) expected")
    return pack_nchw(x[:, :, None, None], threshold).reshape(x.shape[0], -1)


def pack_conv_weight(w: Tensor) -> Tensor:
    """(O, I, kh, kw) ±1 weight -> (O, kh*kw*ceil(I/64)) int64: tap-major, then channel words."""
    _check(w.dim() == 4, "conv weight must be (O, I, kh, kw)")
    o = w.shape[0]
    # (O, I, kh, kw) read as N=O, C=I, H=kh, W=kw: exactly the NHWC packing of each filter.
    return pack_nchw(w.float(), None).reshape(o, -1).contiguous()


def pack_linear_weight(w: Tensor) -> Tensor:
    """(O, K) ±1 weight -> (O, ceil(K/64)) int64."""
    return pack_rows(w.float().contiguous())


def unpack_words(words: Tensor, channels: int) -> Tensor:
    """(..., Cw) int64 -> (..., channels) float32 ±1 (inverse of the packing)."""
    bits = (words.unsqueeze(-1) >> _SHIFTS) & 1
    bits = bits.flatten(-2)[..., :channels]
    return bits.to(torch.float32) * 2 - 1


class PreparedWeight:
    """Packed ±1 weight words (O, Kw) plus the active kernel's layout of them, cached per ISA.

    The kernels read weights interleaved by 8 output channels (AVX2 also nibble-split), built
    once here rather than per call.
    """

    def __init__(self, words: Tensor) -> None:
        _check(words.dim() == 2 and words.dtype == torch.int64, "weight words: (O, Kw) int64")
        self.words = words.contiguous()
        self._cache: tuple[str, Any] | None = None
        self._tap_pc: dict[int, Any] = {}

    @property
    def out_features(self) -> int:
        return int(self.words.shape[0])

    def native(self) -> Any:
        """The prepared numpy buffer for the kernel active now."""
        assert _native is not None
        isa = _native.isa()
        if self._cache is None or self._cache[0] != isa:
            self._cache = (isa, _native.prepare_weights(self.words.numpy()))
        return self._cache[1]

    def tap_popcounts(self, taps: int) -> Any:
        """Popcount of each of the `taps` kernel taps per output (the conv's padding correction)."""
        assert _native is not None
        if taps not in self._tap_pc:
            self._tap_pc[taps] = _native.tap_popcounts(self.words.numpy(), taps)
        return self._tap_pc[taps]


def _prepared(w: Tensor | PreparedWeight) -> PreparedWeight:
    return w if isinstance(w, PreparedWeight) else PreparedWeight(w)


# ---- epilogue (fallback) ---------------------------------------------------------------------


def _epilogue(
    y: Tensor, scale: Tensor | None, bias: Tensor | None, residual: Tensor | None
) -> Tensor:
    """The reference order, channel dim last: y * scale, + bias, residual + y."""
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    if residual is not None:
        y = residual + y
    return y


def _vec(v: Tensor | None, n: int, name: str) -> Tensor | None:
    if v is None:
        return None
    _check(v.shape == (n,), f"{name} must have shape ({n},)")
    return v.float().contiguous()


# ---- two binary layers in a row: integer thresholds ------------------------------------------


def integer_thresholds(
    scale: Tensor, bias: Tensor, threshold: Tensor | None, k: int
) -> tuple[Tensor, Tensor]:
    """Fold a layer's float affine and the next layer's sign into one integer compare per output.

    The reference computes `sign((d * scale + bias) + threshold)` on the integer ±1 dot product
    d in [-k, k], each float op rounded once. Every op is monotone in d (decreasing where
    scale < 0), so the sign bit is `(d >= T) XOR flip`. T is found by bisection on the exact
    float32 expression, so the compare reproduces the reference's bit for every d, rounding
    included. Returns T (O,) int32 and flip (O,) uint8.
    """
    s, b = scale.detach().float(), bias.detach().float()
    t = None if threshold is None else threshold.detach().float()

    def sign_bit(d: Tensor) -> Tensor:
        y = d.float() * s + b  # two roundings, as `layers.affine`
        return (y if t is None else y + t) >= 0

    flip = s < 0  # decreasing: T is where the bit turns off
    lo = torch.full_like(s, -k, dtype=torch.int64)  # smallest d with (bit XOR flip) set, in
    hi = torch.full_like(s, k + 1, dtype=torch.int64)  # [-k, k + 1]; k + 1 stands for "never"
    while bool((lo < hi).any()):
        mid = torch.div(lo + hi, 2, rounding_mode="floor")
        on = sign_bit(mid) ^ flip
        active = lo < hi
        hi = torch.where(active & on, mid, hi)
        lo = torch.where(active & ~on, mid + 1, lo)
    return lo.to(torch.int32), flip.to(torch.uint8)


def _threshold_bits(dot: Tensor, thresholds: Tensor, flip: Tensor | None) -> Tensor:
    """Fallback: (..., O) integer dot products -> (..., ceil(O/64)) words of (d >= T) ^ flip."""
    on = dot >= thresholds.to(dot.dtype)
    if flip is not None:
        on = on ^ flip.bool()
    lead, o = on.shape[:-1], on.shape[-1]
    words = _pack_torch((on.float() * 2 - 1).reshape(-1, 1, 1, o), None)
    return words.reshape(*lead, words_for(o))


def or_pool(a: Tensor, kernel: int, stride: int, flip: Tensor | None = None) -> Tensor:
    """Max pool (no padding, floor mode) of packed (N, H, W, Cw) sign bits: OR, then XOR `flip`.

    `flip` is a (Cw,) int64 word mask; see `integer_thresholds` for why max pooling of the
    integer dot products becomes an OR of their threshold bits.
    """
    _check(a.dim() == 4 and a.dtype == torch.int64, "or_pool: (N, H, W, Cw) int64 words expected")
    n, h, w, cw = a.shape
    ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    _check(ho > 0 and wo > 0, "input smaller than the pooling window")
    if _native is None:
        bits = unpack_words(a, 64 * cw) > 0  # (N, H, W, 64 Cw)
        win = bits.permute(0, 3, 1, 2).float()
        pooled = F.max_pool2d(win, kernel, stride).permute(0, 2, 3, 1) > 0
        words = _pack_torch(pooled.float() * 2 - 1, None)
        return words if flip is None else words ^ flip
    out = torch.empty((n, ho, wo, cw), dtype=torch.int64)
    f = None if flip is None else flip.contiguous().numpy()
    _native.or_pool(a.contiguous().numpy(), kernel, stride, f, out.numpy(), _threads())
    return out


def flip_words(flip: Tensor) -> Tensor:
    """(O,) 0/1 flip flags -> (ceil(O/64),) int64 words, the layout of packed activations."""
    return pack_rows(flip.float()[None] * 2 - 1)[0]


# ---- binary conv -------------------------------------------------------------------------------


def binary_conv2d(
    a: Tensor,
    w: Tensor | PreparedWeight,
    channels: int,
    kernel_size: tuple[int, int],
    stride: int = 1,
    padding: int = 0,
    scale: Tensor | None = None,
    bias: Tensor | None = None,
    residual: Tensor | None = None,
    out: Tensor | None = None,
    thresholds: Tensor | None = None,
    flip: Tensor | None = None,
) -> Tensor:
    """Binary conv of packed NHWC bits `a` with packed weights `w` (from `pack_conv_weight`).

    Returns (N, O, Ho, Wo) float32 in channels-last memory: `residual + (dot * scale + bias)`,
    where dot is the ±1 correlation with zero padding (the reference `F.conv2d` on sign(x)).
    `out`, when given, is the (N, Ho, Wo, O) contiguous buffer to write.

    With `thresholds` (and `flip`, from `integer_thresholds`) it returns packed sign bits instead,
    (N, Ho, Wo, ceil(O/64)) int64 words of `(dot >= T) XOR flip`: the next binary layer's input.
    """
    _check(a.dim() == 4 and a.dtype == torch.int64, "a: (N, H, W, Cw) int64 expected")
    pw = _prepared(w)
    w = pw.words
    kh, kw = kernel_size
    n, h, wd, cw = a.shape
    o = w.shape[0]
    _check(cw == words_for(channels), "a: last dim must be ceil(channels/64)")
    _check(w.dim() == 2 and w.shape[1] == kh * kw * cw, "w: (O, kh*kw*Cw) expected")
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    _check(ho > 0 and wo > 0, "input smaller than the kernel")
    scale, bias = _vec(scale, o, "scale"), _vec(bias, o, "bias")
    res = None
    if residual is not None:
        _check(residual.shape == (n, o, ho, wo), "residual must be (N, O, Ho, Wo)")
        res = residual.float().permute(0, 2, 3, 1)  # a view: the kernel reads any strides
    packed = thresholds is not None
    _check(not packed or (scale is None and bias is None and res is None), "thresholds: no affine")
    if _native is None:
        xs = unpack_words(a, channels).permute(0, 3, 1, 2)
        ws = unpack_words(w.reshape(o, kh, kw, cw), channels).permute(0, 3, 1, 2)
        y = F.conv2d(xs, ws, None, stride, padding).permute(0, 2, 3, 1)
        if packed:
            return _threshold_bits(y.round().to(torch.int64), thresholds, flip)  # type: ignore[arg-type]
        return _epilogue(y, scale, bias, res).permute(0, 3, 1, 2)
    if packed:
        out = _out(out, (n, ho, wo, words_for(o)), torch.int64)
    else:
        out = _out(out, (n, ho, wo, o), torch.float32)
    _native.conv(
        a.contiguous().numpy(),
        w.numpy(),
        pw.native(),
        pw.tap_popcounts(kh * kw),
        channels,
        kh,
        kw,
        stride,
        padding,
        None if scale is None else scale.numpy(),
        None if bias is None else bias.numpy(),
        None if res is None else res.numpy(),
        out.numpy(),
        _threads(),
        *_threshold_args(thresholds, flip, o),
    )
    return out if packed else out.permute(0, 3, 1, 2)


def _threshold_args(thresholds: Tensor | None, flip: Tensor | None, o: int) -> tuple[Any, Any]:
    if thresholds is None:
        return None, None
    _check(thresholds.shape == (o,), f"thresholds must have shape ({o},)")
    _check(flip is None or flip.shape == (o,), f"flip must have shape ({o},)")
    t = thresholds.to(torch.int32).contiguous().numpy()
    return t, None if flip is None else flip_words(flip).numpy()


class BinaryConvPlan:
    """`pack_nchw` + `binary_conv2d` for one layer and one input shape, prepared once.

    At batch 1 a layer's native work is tens of microseconds, as much as the checks, dtype and
    layout conversions and numpy views that each call of the two functions redoes. A plan checks
    the geometry and holds numpy views of the constant operands and of its own output buffers,
    so a call is two native calls. Requires the native backend; the result is a view of the
    plan's buffer, overwritten by its next call (callers keep one plan per thread).
    """

    def __init__(
        self,
        weight: PreparedWeight,
        shape: tuple[int, int, int, int],
        kernel_size: tuple[int, int],
        stride: int,
        padding: int,
        threshold: Tensor | None,
        scale: Tensor | None,
        bias: Tensor | None,
        alloc: Callable[[str, tuple[int, ...], torch.dtype], Tensor] | None = None,
    ) -> None:
        """`alloc(role, shape, dtype)` supplies the "bits" and "out" buffers (default: new)."""
        _check(_native is not None, "BinaryConvPlan needs the native kernels")
        alloc = alloc or (lambda _role, shape, dtype: torch.empty(shape, dtype=dtype))
        n, c, h, w = shape
        kh, kw = kernel_size
        o = weight.out_features
        _check(weight.words.shape[1] == kh * kw * words_for(c), "weight does not fit the input")
        ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
        _check(ho > 0 and wo > 0, "input smaller than the kernel")
        self.weight = weight
        self.geometry = (c, kh, kw, stride, padding)
        self.bits = alloc("bits", (n, h, w, words_for(c)), torch.int64)
        self.out = alloc("out", (n, ho, wo, o), torch.float32)
        self.result = self.out.permute(0, 3, 1, 2)  # (N, O, Ho, Wo), channels-last memory
        self.macs = n * ho * wo * o * c * kh * kw
        self._alloc = alloc
        self._nhwc: Any = None  # channels-last copy of an NCHW input, allocated on first use
        self._bits, self._out = self.bits.numpy(), self.out.numpy()
        self._w = weight.words.numpy()
        self._tap_pc = weight.tap_popcounts(kh * kw)
        self._t, self._scale, self._bias = (
            None if v is None else v.detach().float().contiguous().numpy()
            for v in (threshold, _vec(scale, o, "scale"), _vec(bias, o, "bias"))
        )
        _check(self._t is None or self._t.shape == (c,), "threshold must have shape (C,)")

    def __call__(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """sign(x + t) packed, then residual + (dot * scale + bias); x float32 of `shape`."""
        assert _native is not None
        nt = _threads()
        xs = x.permute(0, 2, 3, 1).numpy()  # any memory format: the kernels read strides
        res = None
        if residual is x and self._transpose_residual(x):
            # NCHW x (a real conv's output): one pass writes the bits and a channels-last copy,
            # so the epilogue reads each pixel's residual row contiguously
            res = self._copy_nhwc(x)
            _native.pack(xs, self._t, self._bits, nt, res)
        else:
            _native.pack(xs, self._t, self._bits, nt)
            if residual is not None:
                res = xs if residual is x else residual.permute(0, 2, 3, 1).numpy()
        _native.conv(
            self._bits, self._w, self.weight.native(), self._tap_pc, *self.geometry,
            self._scale, self._bias, res, self._out, nt,
        )  # fmt: skip
        return self.result

    @staticmethod
    def _transpose_residual(x: Tensor) -> bool:
        """x is NCHW-contiguous with more than one pixel (channels-last memory is not)."""
        return x.is_contiguous() and x.shape[2] * x.shape[3] > 1

    def _copy_nhwc(self, x: Tensor) -> Any:
        if self._nhwc is None:
            n, c, h, w = x.shape
            self._nhwc = self._alloc("nhwc", (n, h, w, c), torch.float32).numpy()
        return self._nhwc


# ---- binary linear -----------------------------------------------------------------------------


def _bytes_to_words(bits: np.ndarray) -> Tensor:
    """(N, nb) uint8 rows of `packbits(bitorder="little")` -> (N, ceil(nb/8)) int64 kernel words."""
    n, nb = bits.shape
    buf = np.zeros((n, words_for(8 * nb) * 8), dtype=np.uint8)
    buf[:, :nb] = bits
    return torch.from_numpy(buf.view("<i8"))


def packed_dot(x_bits: np.ndarray, w_bits: np.ndarray, dim: int) -> np.ndarray:
    """±1 dot products sign(x) . sign(w) of packed byte rows: (N, nb) x (C, nb) -> (N, C) int64.

    The feature wire's and head files' packed bits (`extractor.packing.pack_signs`, padding bits
    zero) on the popcount kernel: `dim - 2 * popcount(x XOR w)`. Binary heads (the paper's (a))
    are scored with it when served and when trained.
    """
    _check(x_bits.ndim == 2 and w_bits.ndim == 2, "packed_dot: 2-d byte rows expected")
    _check(x_bits.shape[1] == w_bits.shape[1], "packed_dot: rows of different widths")
    _check(0 < dim <= 8 * x_bits.shape[1], "packed_dot: dim does not fit the rows")
    if x_bits.shape[0] == 0 or w_bits.shape[0] == 0:
        return np.zeros((x_bits.shape[0], w_bits.shape[0]), dtype=np.int64)
    dots = binary_linear(_bytes_to_words(x_bits), _bytes_to_words(w_bits), dim)
    return dots.numpy().astype(np.int64)  # exact: |dot| <= dim < 2**24


def binary_linear(
    a: Tensor,
    w: Tensor | PreparedWeight,
    in_features: int,
    scale: Tensor | None = None,
    bias: Tensor | None = None,
    residual: Tensor | None = None,
    thresholds: Tensor | None = None,
    flip: Tensor | None = None,
) -> Tensor:
    """(M, Kw) packed rows x (O, Kw) packed weights -> (M, O) float32 `residual + dot*scale + bias`.

    With no scale/bias the result is the ±1 dot product K - 2 * popcount(a XOR w), exact.
    Rows may hold more than ceil(K/64) words when padding bits sit between the real ones (a conv
    map flattened pixel by pixel), as long as they are zero in `a` and `w` alike. With
    `thresholds` the result is packed sign bits, as in `binary_conv2d`.
    """
    _check(a.dim() == 2 and a.dtype == torch.int64, "a: (M, Kw) int64 expected")
    pw = _prepared(w)
    w = pw.words
    kw = int(w.shape[1])
    _check(a.shape[1] == kw >= words_for(in_features), "a, w: rows of at least ceil(K/64) words")
    m, o = a.shape[0], w.shape[0]
    scale, bias = _vec(scale, o, "scale"), _vec(bias, o, "bias")
    if residual is not None:
        _check(residual.shape == (m, o), "residual must be (M, O)")
        residual = residual.float().contiguous()
    packed = thresholds is not None
    _check(not packed or (scale is None and bias is None and residual is None), "no affine")
    if _native is None:
        y = unpack_words(a, 64 * kw) @ unpack_words(w, 64 * kw).T  # padding: (-1)(-1) each
        y = y - (64 * kw - in_features)
        if packed:
            return _threshold_bits(y.round().to(torch.int64), thresholds, flip)  # type: ignore[arg-type]
        return _epilogue(y, scale, bias, residual)
    if packed:
        out = torch.empty((m, words_for(o)), dtype=torch.int64)
    else:
        out = torch.empty((m, o), dtype=torch.float32)
    _native.linear(
        a.contiguous().numpy(),
        w.numpy(),
        pw.native(),
        in_features,
        None if scale is None else scale.numpy(),
        None if bias is None else bias.numpy(),
        None if residual is None else residual.numpy(),
        out.numpy(),
        _threads(),
        *_threshold_args(thresholds, flip, o),
    )
    return out
