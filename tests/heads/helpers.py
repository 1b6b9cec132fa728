"""Creating heads with known weights straight through `register_version`, as the worker does."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from extractor.packing import pack_signs
from service.db import session_scope
from service.heads.service import register_version
from service.heads.tables import HeadVersion

PREPROCESSING: dict[str, Any] = {
    "input_size": [3, 32, 32],
    "resize": 36,
    "crop": "center",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bilinear",
}


def known_weights(head_type: str, d: int, c: int, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    if head_type == "float":
        arrays = {
            "weight": rng.normal(size=(c, d)).astype(np.float32),
            "bias": rng.normal(scale=0.1, size=c).astype(np.float32),
        }
    elif head_type == "binary":
        arrays = {
            "weight_bits": pack_signs(rng.normal(size=(c, d))),
            "scale": rng.uniform(0.1, 0.3, size=c).astype(np.float32),
            "bias": rng.normal(scale=0.1, size=c).astype(np.float32),
        }
    else:
        arrays = {
            "w1": rng.normal(size=(6, d)).astype(np.float32),
            "b1": rng.normal(size=6).astype(np.float32),
            "w2": rng.normal(size=(c, 6)).astype(np.float32),
            "b2": rng.normal(size=c).astype(np.float32),
        }
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def add_version(
    app: Any,
    tenant_id: str,
    name: str,
    *,
    head_type: str = "float",
    labels: list[str] | None = None,
    extractor_id: str = "e" * 64,
    d: int = 20,
    seed: int = 0,
    metrics: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> tuple[HeadVersion, dict[str, torch.Tensor]]:
    """Register and commit one version; returns it with the weights it holds."""
    labels = labels or ["cat", "dog", "bird"]
    weights = known_weights(head_type, d, len(labels), seed)
    with session_scope(app.state.sessionmaker) as session:
        version = register_version(
            session,
            app.state.blobs,
            tenant_id=tenant_id,
            head_name=name,
            head_type=head_type,
            labels=labels,
            extractor_id=extractor_id,
            weights=weights,
            metrics=metrics if metrics is not None else {"val_top1": 0.5 + seed / 100},
            dataset_id=None,
            job_id=None,
            preprocessing=preprocessing or PREPROCESSING,
            feature_dim=d,
        )
    return version, weights
