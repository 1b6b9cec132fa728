"""Scoring features with a head: numpy reference implementations of the layouts in headfile.py.

Binary heads run on packed sign bits with XOR + popcount (BinaryNet's XNOR-popcount written as a
Hamming distance): for ±1 vectors a, b of length D, ``a . b = D - 2 * hamming(a, b)``. Padding
bits are zero in both operands, so they never count.
"""

from __future__ import annotations

import numpy as np

from extractor.packing import pack_signs
from service.heads.headfile import HeadFile

# Bounds the (B, C, bytes) XOR intermediate of the binary path to roughly this many bytes.
_XOR_CHUNK_BYTES = 32 * 1024 * 1024


__all__ = ["FeatureMismatch", "logits", "pack_signs", "scores", "softmax", "top_k"]


class FeatureMismatch(ValueError):
    """Features that do not fit a head (width or kind); the API maps it to 409/422."""


def popcount_xor(x_bits: np.ndarray, w_bits: np.ndarray) -> np.ndarray:
    """``popcount(x XOR w)`` for every pair: (B, nb) x (C, nb) -> (B, C) int64."""
    b, c = x_bits.shape[0], w_bits.shape[0]
    out = np.empty((b, c), dtype=np.int64)
    rows = max(1, _XOR_CHUNK_BYTES // max(1, c * w_bits.shape[1]))
    for start in range(0, b, rows):
        x = x_bits[start : start + rows, None, :]  # (b, 1, nb)
        out[start : start + rows] = np.bitwise_count(x ^ w_bits[None, :, :]).sum(-1, dtype=np.int64)
    return out


def logits(head: HeadFile, floats: np.ndarray | None, bits: np.ndarray | None) -> np.ndarray:
    """Raw class scores (B, C). Float and MLP heads need ``floats``; binary heads take ``bits``
    (computed from ``floats`` when only those are given)."""
    w = head.weights
    d = head.feature_dim
    if head.head_type == "binary":
        if bits is None:
            if floats is None:
                raise FeatureMismatch("no features given")
            _check_float_width(floats, d)
            bits = pack_signs(floats)
        nb = w["weight_bits"].shape[1]
        if bits.ndim != 2 or bits.shape[1] != nb or bits.dtype != np.uint8:
            raise FeatureMismatch(f"expected packed bits of {nb} bytes per image (D={d})")
        dots = d - 2 * popcount_xor(bits, w["weight_bits"])  # (B, C) = sign(x) . sign(w)
        return (dots.astype(np.float32) * w["scale"] + w["bias"]).astype(np.float32)
    if floats is None:
        raise FeatureMismatch(f"a {head.head_type} head needs float features, not packed bits")
    _check_float_width(floats, d)
    x = floats.astype(np.float32, copy=False)
    if head.head_type == "float":
        return x @ w["weight"].T + w["bias"]
    hidden = np.maximum(x @ w["w1"].T + w["b1"], 0.0)  # (B, H), ReLU
    return hidden @ w["w2"].T + w["b2"]


def _check_float_width(floats: np.ndarray, d: int) -> None:
    if floats.ndim != 2 or floats.shape[1] != d:
        raise FeatureMismatch(f"expected float features of width {d}, got shape {floats.shape}")


def softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def scores(head: HeadFile, floats: np.ndarray | None, bits: np.ndarray | None) -> np.ndarray:
    """Softmax probabilities (B, C): what the API returns."""
    return softmax(logits(head, floats, bits))


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Best ``k`` (label, probability) per row, highest first; ties keep label order."""
    k = max(1, min(k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [(labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)
    ]
