"""Feature extraction for the transfer table: the binary extractor and the float teacher."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from extractor.imaging import preprocess
from extractor.packing import pack_signs

# The teacher at its native 224 px; (x - 127) / 128 on 0..255 is mean 127/255, std 128/255 on [0,1].
TEACHER_CFG: dict[str, Any] = {
    "input_size": [3, 224, 224],
    "resize": 224,
    "crop": "center",
    "mean": [127 / 255] * 3,
    "std": [128 / 255] * 3,
    "interpolation": "bilinear",
}


def batches(images: np.ndarray, cfg: dict[str, Any], batch_size: int = 64):  # type: ignore[no-untyped-def]
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        yield torch.stack([preprocess(Image.fromarray(a), cfg) for a in chunk])


@torch.inference_mode()
def extract(
    forward_features: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    cfg: dict[str, Any],
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """-> (float32 (N, D) features, packed sign bits (N, ceil(D/8)))."""
    out = [forward_features(x).float().numpy() for x in batches(images, cfg, batch_size)]
    floats = np.concatenate(out)
    return floats, pack_signs(floats)
