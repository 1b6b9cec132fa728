"""Procedurally generated images for distillation: dead leaves, random shapes, noise textures.

Baradad et al., "Learning to See by Looking at Noise", NeurIPS 2021: dead-leaves models and
spectral (1/f) noise teach useful low-level features with no real images at all. Here they only
add diversity (edges, occlusions, colour statistics, textures) next to the few thousand real
images; the teacher labels them like any other image. Everything is deterministic in `seed`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["KINDS", "dead_leaves", "generate", "random_shapes", "spectral_noise"]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))  # type: ignore[return-value]


def dead_leaves(rng: np.random.Generator, side: int) -> np.ndarray:
    """Occluding disks/squares with power-law radii (scale-invariant statistics, like nature)."""
    img = Image.new("RGB", (side, side), _colour(rng))
    draw = ImageDraw.Draw(img)
    rmin, rmax = side * 0.02, side * 0.5
    for _ in range(int(rng.integers(60, 200))):
        # Inverse-CDF sample of p(r) ~ r^-3 on [rmin, rmax].
        u = rng.random()
        r = (rmin**-2 - u * (rmin**-2 - rmax**-2)) ** -0.5
        x, y = rng.uniform(-r, side + r, 2)
        box = (x - r, y - r, x + r, y + r)
        if rng.random() < 0.6:
            draw.ellipse(box, fill=_colour(rng))
        else:
            draw.rectangle(box, fill=_colour(rng))
    return np.asarray(img, dtype=np.uint8)


def random_shapes(rng: np.random.Generator, side: int) -> np.ndarray:
    """Polygons, ellipses, lines and arcs with outlines on a plain or gradient background."""
    bg = np.full((side, side, 3), _colour(rng), dtype=np.float32)
    if rng.random() < 0.5:
        ramp = np.linspace(0, 1, side, dtype=np.float32)[None, :, None]
        bg = bg * (1 - ramp) + np.asarray(_colour(rng), np.float32) * ramp
        if rng.random() < 0.5:
            bg = bg.transpose(1, 0, 2)
    img = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 12))):
        kind = rng.integers(0, 4)
        width = int(rng.integers(1, max(2, side // 20)))
        outline = _colour(rng) if rng.random() < 0.5 else None
        if kind == 0:  # polygon
            n = int(rng.integers(3, 8))
            cx, cy = rng.uniform(0, side, 2)
            rad = rng.uniform(side * 0.05, side * 0.45)
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            pts = [(cx + rad * np.cos(a), cy + rad * np.sin(a)) for a in ang]
            draw.polygon(pts, fill=_colour(rng), outline=outline, width=width)
        elif kind == 1:  # ellipse
            x0, y0 = rng.uniform(-side * 0.2, side, 2)
            w, h = rng.uniform(side * 0.05, side * 0.6, 2)
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=_colour(rng), outline=outline, width=width)
        elif kind == 2:  # poly-line
            pts = [tuple(rng.uniform(0, side, 2)) for _ in range(int(rng.integers(2, 6)))]
            draw.line(pts, fill=_colour(rng), width=width * 2)
        else:  # arc
            x0, y0 = rng.uniform(0, side * 0.6, 2)
            s = rng.uniform(side * 0.2, side * 0.8)
            a0, a1 = sorted(rng.uniform(0, 360, 2))
            draw.arc((x0, y0, x0 + s, y0 + s), a0, a1, fill=_colour(rng), width=width * 2)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    return np.asarray(img, dtype=np.uint8)


def spectral_noise(rng: np.random.Generator, side: int) -> np.ndarray:
    """Coloured 1/f^a noise (a in [1, 3]: from grainy to cloud-like), optionally banded."""
    f = np.fft.fftfreq(side)[:, None] ** 2 + np.fft.rfftfreq(side)[None, :] ** 2
    f[0, 0] = 1.0
    alpha = rng.uniform(1.0, 3.0)
    amp = f ** (-alpha / 2)
    amp[0, 0] = 0.0
    chans = []
    mix = rng.normal(size=(3, 3)) * rng.uniform(0.2, 1.0) + np.eye(3)
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, amp.shape)
        chans.append(np.fft.irfft2(amp * np.exp(1j * phase), s=(side, side)))
    x = np.stack(chans, -1) @ mix.T
    x = (x - x.mean()) / (x.std() + 1e-8)
    if rng.random() < 0.3:  # contour bands: sharp edges on a smooth field
        x = np.sin(x * rng.uniform(2, 6))
    x = x * rng.uniform(40, 80) + rng.uniform(60, 200, 3)
    return np.clip(x, 0, 255).astype(np.uint8)


KINDS = {"dead_leaves": dead_leaves, "shapes": random_shapes, "noise": spectral_noise}


def generate(n: int, side: int, seed: int) -> np.ndarray:
    """(n, side, side, 3) uint8: the kinds in turn, each image from its own seeded generator."""
    fns = list(KINDS.values())
    out = np.empty((n, side, side, 3), dtype=np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        out[i] = fns[i % len(fns)](rng, side)
    return out
