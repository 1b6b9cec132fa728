"""Reference scoring of exported head weights; the trainer's final metrics are computed with it,
so they describe exactly the weights that get registered (binary heads by the served
`binary_logits`, on the popcount kernel)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from service.heads.evaluate import binary_logits


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
            binary_logits(
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
