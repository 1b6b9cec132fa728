"""Reference scoring of exported head weights; the trainer's final metrics are computed with it,
so they describe exactly the weights that get registered (binary heads via XNOR-popcount)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from service.heads.evaluate import binary_logits


def score_binary(
    x_bits: np.ndarray, weight_bits: np.ndarray, scale: np.ndarray, bias: np.ndarray, dim: int
) -> np.ndarray:
    """scale * (D - 2 * popcount(x XOR w)) + bias, for (N, B) and (C, B) packed bits -> (N, C):
    the served computation itself (`service.heads.evaluate.binary_logits`)."""
    return binary_logits(x_bits, weight_bits, scale, bias, dim)


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
