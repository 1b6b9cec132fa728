"""Small labelled images made here: solid red, green and blue with noise, as PNG bytes."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 220)}


def colour_png(label: str, seed: int, size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[label], dtype=np.int16)
    noise = rng.integers(-25, 26, size=(size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def colours_zip(per_label: int, seed: int = 0) -> bytes:
    """A zip whose top-level folders are the labels: red/red-000.png, ..."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, label in enumerate(COLOURS):
            for i in range(per_label):
                zf.writestr(f"{label}/{label}-{i:03d}.png", colour_png(label, seed + 1000 * k + i))
    return buf.getvalue()
