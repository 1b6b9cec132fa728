"""A small labelled image set made in the test: coloured shapes that any extractor separates.

Each class is one shape in one colour family; position, size, background and exact hue vary
with the seed, so no two images share bytes (uploads dedupe by SHA-256).
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
from PIL import Image, ImageDraw

CLASSES = {"circle": (220, 40, 40), "square": (40, 200, 60), "triangle": (40, 70, 230)}


def shape_png(label: str, seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng([list(CLASSES).index(label), seed])
    grey = int(rng.integers(90, 170))
    img = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    r = int(rng.integers(size // 4, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in CLASSES[label])
    if label == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif label == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def shape_set(per_class: int, start: int = 0) -> dict[str, list[bytes]]:
    return {label: [shape_png(label, start + i) for i in range(per_class)] for label in CLASSES}


def zip_by_label(images: dict[str, list[bytes]]) -> bytes:
    """A zip whose top-level folders are the labels, as `POST .../images` takes it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for label, pngs in images.items():
            for i, data in enumerate(pngs):
                zf.writestr(f"{label}/{i:03d}.png", data)
    return buf.getvalue()
