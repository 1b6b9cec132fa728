"""Scoring features with a head: numpy reference implementations of the layouts in headfile.py.

Binary heads run on packed sign bits with XOR + popcount (BinaryNet's XNOR-popcount written as a
Hamming distance): for ±1 vectors a, b of length D, ``a . b = D - 2 * hamming(a, b)``, on the
extractor's compiled popcount kernel (`extractor.kernels.ops.packed_dot`). Padding bits are zero
in both operands, so they never count.
"""

from __future__ import annotations

import numpy as np

from extractor.kernels import ops
from extractor.packing import pack_signs
from service.heads.headfile import HeadFile

__all__ = ["FeatureMismatch", "binary_logits", "logits", "pack_signs", "scores", "softmax", "top_k"]


class FeatureMismatch(ValueError):
    """Features that do not fit a head (width or kind); the API maps it to 409/422."""


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
        return binary_logits(bits, w["weight_bits"], w["scale"], w["bias"], d)
    if floats is None:
        raise FeatureMismatch(f"a {head.head_type} head needs float features, not packed bits")
    _check_float_width(floats, d)
    x = floats.astype(np.float32, copy=False)
    if head.head_type == "float":
        return x @ w["weight"].T + w["bias"]
    hidden = np.maximum(x @ w["w1"].T + w["b1"], 0.0)  # (B, H), ReLU
    return hidden @ w["w2"].T + w["b2"]


def binary_logits(
    bits: np.ndarray, weight_bits: np.ndarray, scale: np.ndarray, bias: np.ndarray, dim: int
) -> np.ndarray:
    """scale * (sign(x) . sign(w)) + bias in float32: (B, nb) and (C, nb) packed bits -> (B, C).

    The dot products run on the extractor's popcount kernel (`ops.packed_dot`); the served
    logits and the trainer's final metrics (`service.training.scoring`) both come from here.
    """
    dots = ops.packed_dot(bits, weight_bits, dim).astype(np.float32)
    return (dots * scale.astype(np.float32) + bias.astype(np.float32)).astype(np.float32)


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
