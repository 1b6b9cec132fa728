"""Procedurally generated images for distillation: dead leaves, shapes, noise, fractals, CPPNs.

Baradad et al., "Learning to See by Looking at Noise", NeurIPS 2021: dead-leaves models,
spectral (1/f) noise and randomly initialised generator networks ("shaders") teach useful
features with no real images at all; Kataoka et al., "Pre-training without Natural Images"
(FractalDB, ACCV 2020): formula-driven fractals (iterated function systems) do too. Here they add
diversity (edges, occlusions, colour statistics, textures, self-similar shapes) next to the few
thousand real images; the teacher labels them like any other image. Deterministic in `seed`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "KINDS",
    "dead_leaves",
    "generate",
    "ifs_fractal",
    "random_cppn",
    "random_shapes",
    "spectral_noise",
]


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


def ifs_fractal(rng: np.random.Generator, side: int) -> np.ndarray:
    """An iterated-function-system fractal (FractalDB): 2-4 random contractive affine maps,
    rendered by the chaos game as a coloured point density on a plain background. Systems whose
    attractor fills under 3% of the canvas (a few thin strokes) are drawn again."""
    for _ in range(8):
        density = _ifs_density(rng, side)
        if (density > 0).mean() >= 0.03:
            break
    fg, bg = np.asarray(_colour(rng), float), np.asarray(_colour(rng), float)
    img = bg * (1 - density[..., None]) + fg * density[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _ifs_density(rng: np.random.Generator, side: int, points: int = 30_000) -> np.ndarray:
    """(side, side) log point density in [0, 1] of one random IFS's chaos-game orbit."""
    n_maps = int(rng.integers(2, 5))
    a = rng.uniform(-1, 1, (n_maps, 2, 2))
    sigma = np.linalg.svd(a, compute_uv=False)[:, 0]  # largest singular value of each map
    a *= np.minimum(1.0, 0.9 / sigma)[:, None, None]  # every map contracts: the orbit is bounded
    b = rng.uniform(-1, 1, (n_maps, 2))
    det = np.abs(np.linalg.det(a)) + 1e-3
    choice = rng.choice(n_maps, size=points, p=det / det.sum())
    pts = np.empty((points, 2))
    p = np.zeros(2)
    for i, k in enumerate(choice):
        p = a[k] @ p + b[k]
        pts[i] = p
    pts = pts[100:]  # drop the burn-in before the orbit reaches the attractor
    lo, hi = pts.min(0), pts.max(0)
    span = float((hi - lo).max()) + 1e-9
    margin = rng.uniform(0.05, 0.2) * side
    xy = ((pts - lo) / span * (side - 2 * margin) + margin).astype(int).clip(0, side - 1)
    density = np.zeros((side, side))
    np.add.at(density, (xy[:, 1], xy[:, 0]), 1.0)
    return np.log1p(density) / max(float(np.log1p(density).max()), 1e-9)


def random_cppn(rng: np.random.Generator, side: int) -> np.ndarray:
    """A randomly initialised coordinate network (x, y, r) -> RGB: smooth shapes, stripes and
    swirls, as the 'random network' image generators of Baradad et al. produce."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side), indexing="ij")
    scale = rng.uniform(1.0, 6.0)
    h = np.stack([xx * scale, yy * scale, np.hypot(xx, yy) * scale], -1).reshape(-1, 3)
    width = int(rng.integers(16, 33))
    acts = (np.tanh, np.sin, lambda v: np.exp(-(v**2)))
    for _ in range(int(rng.integers(3, 6))):
        w = rng.normal(0, rng.uniform(1.0, 3.0) / np.sqrt(h.shape[1]), (h.shape[1], width))
        h = acts[int(rng.integers(len(acts)))](h @ w)
    out = h @ rng.normal(0, 1 / np.sqrt(width), (width, 3))
    out = (out - out.mean(0)) / (out.std(0) + 1e-8)
    img = 128 + out.reshape(side, side, 3) * rng.uniform(40, 90)
    return np.clip(img, 0, 255).astype(np.uint8)


KINDS = {
    "dead_leaves": dead_leaves,
    "shapes": random_shapes,
    "noise": spectral_noise,
    "fractal": ifs_fractal,
    "cppn": random_cppn,
}


def generate(n: int, side: int, seed: int) -> np.ndarray:
    """(n, side, side, 3) uint8: the kinds in turn, each image from its own seeded generator."""
    fns = list(KINDS.values())
    out = np.empty((n, side, side, 3), dtype=np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        out[i] = fns[i % len(fns)](rng, side)
    return out
