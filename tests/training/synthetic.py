"""Synthetic problems whose answer is known, small enough to train in well under a second."""

from __future__ import annotations

import numpy as np


def pack(x: np.ndarray) -> np.ndarray:
    return np.packbits((x >= 0).astype(np.uint8), axis=1, bitorder="little")


def blobs(
    n: int = 300, d: int = 32, c: int = 4, spread: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Well separated Gaussian clusters: every sensible linear head gets them all right."""
    rng = np.random.default_rng(seed)
    centers = rng.choice([-1.0, 1.0], size=(c, d))
    y = np.arange(n) % c
    x = (centers[y] + spread * rng.normal(size=(n, d))).astype(np.float32)
    return x, pack(x), y, [f"label-{i}" for i in range(c)]


def flipped_prototypes(
    n: int = 400, d: int = 64, c: int = 4, flip: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """±1 class prototypes with `flip` of the signs flipped per example: a binary-head problem."""
    rng = np.random.default_rng(seed)
    protos = rng.choice([-1.0, 1.0], size=(c, d))
    y = np.arange(n) % c
    flips = np.where(rng.random((n, d)) < flip, -1.0, 1.0)
    x = (protos[y] * flips * rng.uniform(0.5, 1.5, size=(n, d))).astype(np.float32)
    return x, pack(x), y, [f"p{i}" for i in range(c)]


def xor_problem(
    n: int = 400, d: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Label = sign(x0 * x1): no linear head beats chance, one hidden layer solves it."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, d)).astype(np.float32)
    x[:, :2] += np.sign(x[:, :2]) * 0.2  # a margin around the axes
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    return x, pack(x), y, ["different", "same"]
