"""Sign bits of feature vectors, packed 8 per byte (the binary form of a feature, the paper's (a)).

Bit i of a vector is `x[i] >= 0` (so sign(0) = +1, matching `quantizers.sign`), stored in
`numpy.packbits(..., bitorder="little")` order: feature i is bit (i % 8) of byte i // 8, and the
last byte is zero-padded. Any client can unpack with numpy alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "pack_signs",
    "pack_weight_signs",
    "packed_width",
    "unpack_signs",
    "unpack_weight_signs",
]


def packed_width(dim: int) -> int:
    """Bytes per packed vector of `dim` features: ceil(dim / 8)."""
    return (dim + 7) // 8


def pack_signs(x: Tensor | np.ndarray) -> np.ndarray:
    """(..., D) real values -> (..., ceil(D/8)) uint8, bit = x >= 0, little bit order."""
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    return np.packbits(a >= 0, axis=-1, bitorder="little")


def unpack_signs(bits: np.ndarray | Tensor, dim: int) -> np.ndarray:
    """(..., ceil(D/8)) uint8 -> (..., D) float32 in {-1, +1}."""
    b = bits.cpu().numpy() if isinstance(bits, Tensor) else np.asarray(bits)
    if b.dtype != np.uint8:
        raise ValueError(f"packed sign bits must be uint8, got {b.dtype}")
    if b.shape[-1] != packed_width(dim):
        raise ValueError(f"{b.shape[-1]} bytes cannot hold exactly {dim} features")
    u = np.unpackbits(b, axis=-1, count=dim, bitorder="little")
    return u.astype(np.float32) * 2.0 - 1.0


def pack_weight_signs(w: Tensor) -> Tensor:
    """Latent weight of any shape -> flat uint8 tensor: bit k = w.flatten()[k] >= 0 (row-major)."""
    return torch.from_numpy(pack_signs(w.detach().reshape(-1)))


def unpack_weight_signs(bits: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Inverse of `pack_weight_signs`: a ±1 float32 tensor of `shape`."""
    n = int(np.prod(shape))
    return torch.from_numpy(unpack_signs(bits.numpy(), n)).reshape(shape)
