"""The head blob: one safetensors file holding a head's weights and everything needed to use it.

A head ships alone next to an on-device copy of the extractor (the paper's point: only the last
layer changes per application), so the file carries its labels, the ``extractor_id`` whose
features it expects, and the extractor's preprocessing (``pretrained_cfg``) as string metadata.

Weight layouts (C classes, D feature width, H hidden units); the trainers in
``service/training`` produce exactly these names and dtypes:

- ``float`` (paper, last layer (b)): ``weight`` (C, D) float32, ``bias`` (C,) float32;
  ``logits = features @ weight.T + bias`` on the extractor's float features.
- ``binary`` (paper, last layer (a)): ``weight_bits`` (C, ceil(D/8)) uint8, the signs of the
  weights packed like ``extractor/packing.py`` (bit i = ``w[i] >= 0``, numpy
  ``packbits(bitorder="little")``, zero padding), ``scale`` (C,) float32, ``bias`` (C,) float32;
  ``logits = scale * (D - 2 * popcount(x_bits XOR w_bits)) + bias`` on the packed sign bits of the
  features, i.e. ``scale * (sign(x) . sign(w)) + bias`` with sign(0) = +1.
- ``mlp``: ``w1`` (H, D), ``b1`` (H,), ``w2`` (C, H), ``b2`` (C,) float32;
  ``logits = relu(features @ w1.T + b1) @ w2.T + b2`` on the float features.

Scores served to users are ``softmax(logits)``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

HEAD_TYPES = ("float", "binary", "mlp")
FORMAT = "headhub-head"
FORMAT_VERSION = "1"
MAX_HEADER_BYTES = 16 * 1024 * 1024


class HeadFormatError(ValueError):
    """Weights or a blob that do not form a valid head of the declared type."""


@dataclass(frozen=True)
class HeadFile:
    """A decoded head: numpy weights (read-only use) plus its metadata."""

    head_type: str
    labels: list[str]
    extractor_id: str
    feature_dim: int
    preprocessing: dict[str, Any]
    created_at: str
    weights: dict[str, np.ndarray] = field(repr=False)

    @property
    def nbytes(self) -> int:
        return sum(int(w.nbytes) for w in self.weights.values())


def _expect(weights: dict[str, np.ndarray], name: str, shape: tuple[int, ...], dtype: Any) -> None:
    if name not in weights:
        raise HeadFormatError(f"missing tensor {name!r}")
    w = weights[name]
    if w.dtype != np.dtype(dtype):
        raise HeadFormatError(f"{name!r} must be {np.dtype(dtype)}, got {w.dtype}")
    if tuple(w.shape) != shape:
        raise HeadFormatError(f"{name!r} must have shape {shape}, got {tuple(w.shape)}")
    if w.dtype.kind == "f" and not np.isfinite(w).all():
        raise HeadFormatError(f"{name!r} contains NaN or infinity")


def validate_weights(
    head_type: str, weights: dict[str, np.ndarray], num_classes: int, feature_dim: int
) -> None:
    """Check names, shapes, dtypes and finiteness against the layouts in the module docstring."""
    c, d = num_classes, feature_dim
    if head_type == "float":
        expected = {"weight", "bias"}
        _expect(weights, "weight", (c, d), np.float32)
        _expect(weights, "bias", (c,), np.float32)
    elif head_type == "binary":
        expected = {"weight_bits", "scale", "bias"}
        _expect(weights, "weight_bits", (c, math.ceil(d / 8)), np.uint8)
        _expect(weights, "scale", (c,), np.float32)
        _expect(weights, "bias", (c,), np.float32)
    elif head_type == "mlp":
        expected = {"w1", "b1", "w2", "b2"}
        if "w1" not in weights or weights["w1"].ndim != 2:
            raise HeadFormatError("missing 2-d tensor 'w1'")
        h = int(weights["w1"].shape[0])
        _expect(weights, "w1", (h, d), np.float32)
        _expect(weights, "b1", (h,), np.float32)
        _expect(weights, "w2", (c, h), np.float32)
        _expect(weights, "b2", (c,), np.float32)
    else:
        raise HeadFormatError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}")
    extra = set(weights) - expected
    if extra:
        raise HeadFormatError(f"unexpected tensors for a {head_type} head: {sorted(extra)}")


def infer_feature_dim(head_type: str, weights: dict[str, np.ndarray]) -> int:
    """D from the weights; a binary head's packed width only gives ceil(D/8), so D = 8 * bytes."""
    key = {"float": "weight", "mlp": "w1", "binary": "weight_bits"}.get(head_type)
    if key is None or key not in weights or weights[key].ndim != 2:
        raise HeadFormatError(f"cannot infer the feature width of a {head_type!r} head")
    width = int(weights[key].shape[1])
    return width * 8 if head_type == "binary" else width


def to_numpy(weights: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        arr = w.detach().cpu().contiguous().numpy() if isinstance(w, torch.Tensor) else w
        out[name] = np.ascontiguousarray(arr)
    return out


def encode_head(head: HeadFile) -> bytes:
    """Serialize to safetensors bytes with all metadata as strings (the format's rule)."""
    validate_weights(head.head_type, head.weights, len(head.labels), head.feature_dim)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "head_type": head.head_type,
        "labels": json.dumps(head.labels),
        "extractor_id": head.extractor_id,
        "feature_dim": str(head.feature_dim),
        "preprocessing": json.dumps(head.preprocessing, sort_keys=True),
        "created_at": head.created_at,
    }
    tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in head.weights.items()}
    return st_save(tensors, metadata=metadata)


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob, read from its JSON header without the tensors."""
    if len(data) < 8:
        raise HeadFormatError("not a safetensors file: too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise HeadFormatError("not a safetensors file: bad header length")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise HeadFormatError("not a safetensors file: header is not JSON") from exc
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise HeadFormatError("safetensors metadata is not an object")
    return meta


def decode_head(data: bytes) -> HeadFile:
    """Parse and validate a head blob (ours or one a user exported and edited)."""
    meta = read_metadata(data)
    if meta.get("format") != FORMAT:
        raise HeadFormatError("not a headhub head file")
    try:
        tensors = st_load(data)
        labels = json.loads(meta["labels"])
        preprocessing = json.loads(meta["preprocessing"])
        feature_dim = int(meta["feature_dim"])
        head = HeadFile(
            head_type=meta["head_type"],
            labels=[str(x) for x in labels],
            extractor_id=meta["extractor_id"],
            feature_dim=feature_dim,
            preprocessing=preprocessing,
            created_at=meta["created_at"],
            weights={k: v.numpy() for k, v in tensors.items()},
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise HeadFormatError(f"bad head metadata: {exc}") from exc
    validate_weights(head.head_type, head.weights, len(head.labels), head.feature_dim)
    return head
