"""Input checks, the stratified split and class weights shared by every head trainer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


class InvalidTrainingData(ValueError):
    """The dataset cannot train a head (shapes disagree, too few labels, NaN features).

    Retrying does not help: a job that raises this fails at once.
    """


class TrainingCancelled(Exception):
    """`should_stop()` returned True at a progress check."""


@dataclass(frozen=True)
class Split:
    """Row indices of the training and validation parts (validation may be empty)."""

    train: Tensor  # (N_train,) int64
    val: Tensor  # (N_val,) int64


def check_inputs(
    x_float: np.ndarray | None,
    x_bits: np.ndarray | None,
    y: np.ndarray,
    labels: list[str],
    feature_dim: int | None = None,
) -> tuple[int, int]:
    """Return (N, D) after checking shapes, label range and finiteness.

    D comes from X_float, else from `feature_dim` (packed bits alone cannot tell it).
    """
    if len(labels) < 2:
        raise InvalidTrainingData(f"a head needs at least 2 labels, got {len(labels)}")
    if len(set(labels)) != len(labels):
        raise InvalidTrainingData("labels must be unique")
    if y.ndim != 1 or len(y) < 2:
        raise InvalidTrainingData("need at least 2 labelled examples")
    if y.min() < 0 or y.max() >= len(labels):
        raise InvalidTrainingData("y holds a label index outside labels")
    if len(np.unique(y)) < 2:
        raise InvalidTrainingData("every example has the same label; a head needs 2 or more")
    n = len(y)
    if x_float is None and x_bits is None:
        raise InvalidTrainingData("no features given")
    d = -1 if feature_dim is None else feature_dim
    if x_float is not None:
        if x_float.ndim != 2 or x_float.shape[0] != n:
            raise InvalidTrainingData(f"X_float has shape {x_float.shape}, expected ({n}, D)")
        if not np.isfinite(x_float).all():
            raise InvalidTrainingData("X_float holds NaN or infinite values")
        d = x_float.shape[1]
    if x_bits is not None:
        if x_bits.dtype != np.uint8 or x_bits.ndim != 2 or x_bits.shape[0] != n:
            raise InvalidTrainingData(f"X_bits must be uint8 ({n}, ceil(D/8)), got {x_bits.shape}")
        if d >= 0 and x_bits.shape[1] != (d + 7) // 8:
            raise InvalidTrainingData(f"X_bits width {x_bits.shape[1]} does not match D={d}")
    if d < 0:
        raise InvalidTrainingData("the feature width D is unknown without X_float")
    return n, d


def stratified_split(y: Tensor, fraction: float, generator: torch.Generator) -> Split:
    """Hold out about `fraction` of each label, keeping at least one training example per label.

    A label with a single example stays in training. Order within each part is shuffled by
    `generator`, so the split depends only on the seed.
    """
    if not 0.0 <= fraction < 1.0:
        raise InvalidTrainingData(f"validation_fraction must be in [0, 1), got {fraction}")
    train_parts, val_parts = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val = round(fraction * len(idx))
        if fraction > 0 and len(idx) >= 2:
            n_val = max(n_val, 1)
        n_val = min(n_val, len(idx) - 1)
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    train = torch.cat(train_parts)
    val = torch.cat(val_parts)
    train = train[torch.randperm(len(train), generator=generator)]
    return Split(train=train, val=val)


def class_weights(y_train: Tensor, n_classes: int, balance: bool) -> Tensor:
    """Per-class loss weights N / (C_present * n_c): each present label weighs the same in total."""
    if not balance:
        return torch.ones(n_classes)
    counts = torch.bincount(y_train, minlength=n_classes).float()
    present = counts > 0
    w = torch.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def standardizer(x: Tensor, enabled: bool) -> tuple[Tensor, Tensor]:
    """Mean and std of the training features (zeros/ones when disabled); std floored at 1e-6."""
    if not enabled:
        return torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    return mean, std


def unpack_bits(bits: np.ndarray, dim: int) -> Tensor:
    """Packed sign bits -> float ±1, (N, dim); little bit order as in `extractor.packing`."""
    unpacked = np.unpackbits(bits, axis=1, count=dim, bitorder="little")
    return torch.from_numpy(unpacked.astype(np.float32) * 2.0 - 1.0)


def pack_bits(signs: Tensor) -> Tensor:
    """(C, D) ±1 (or any real, >= 0 means +1) -> (C, ceil(D/8)) uint8, padding bits 0."""
    bits = (signs >= 0).numpy().astype(np.uint8)
    return torch.from_numpy(np.packbits(bits, axis=1, bitorder="little"))
