"""Reference scoring of exported head weights; the trainer's final metrics are computed with it,
so they describe exactly the weights that get registered (binary heads via XNOR-popcount)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# popcount of every byte value
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


def score_binary(
    x_bits: np.ndarray, weight_bits: np.ndarray, scale: np.ndarray, bias: np.ndarray, dim: int
) -> np.ndarray:
    """scale * (D - 2 * popcount(x XOR w)) + bias, for (N, B) and (C, B) packed bits -> (N, C).

    Padding bits past D are 0 in both operands (packbits pads with 0), so they never count.
    """
    out = np.empty((x_bits.shape[0], weight_bits.shape[0]), dtype=np.float32)
    step = max(1, 4_000_000 // max(1, weight_bits.size))  # bound the (rows, C, B) temporary
    for i in range(0, x_bits.shape[0], step):
        xor = np.bitwise_xor(x_bits[i : i + step, None, :], weight_bits[None, :, :])
        mismatches = _POPCOUNT[xor].sum(axis=2)  # (rows, C)
        out[i : i + step] = scale * (dim - 2 * mismatches) + bias
    return out


def score(
    head_type: str,
    weights: dict[str, Tensor],
    x_float: np.ndarray | None,
    x_bits: np.ndarray | None,
    dim: int,
) -> Tensor:
    """Scores (N, C) of a head given its exported weights."""
    if head_type == "binary":
        assert x_bits is not None
        return torch.from_numpy(
            score_binary(
                x_bits,
                weights["weight_bits"].numpy(),
                weights["scale"].numpy(),
                weights["bias"].numpy(),
                dim,
            )
        )
    assert x_float is not None
    x = torch.from_numpy(x_float)
    if head_type == "float":
        return x @ weights["weight"].t() + weights["bias"]
    if head_type == "mlp":
        h = torch.relu(x @ weights["w1"].t() + weights["b1"])
        return h @ weights["w2"].t() + weights["b2"]
    raise ValueError(f"unknown head_type {head_type!r}")
