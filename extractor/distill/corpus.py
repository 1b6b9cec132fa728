"""The offline, unlabelled distillation corpus: clip art, photos, Fashion-MNIST, procedural images.

Every source is a uint8 tensor (N, C, H, W), C in {1, 3}; the sampler in `augment.py` crops
from them. Sources and what is excluded (see `holdout.py`, the single rule shared with
`bench/transfer`):

- `clipart`: Debian `openclipart-png`, composited on white, padded square, shrunk once to
  `side` px and cached as `.npy` under the cache dir. Held-out files (30%) and the top-level
  categories in `clipart_exclude` (the out-of-domain transfer task's) are never decoded; the
  validation slice (3%) is kept apart. Files over `MAX_SOURCE_PIXELS` are skipped.
- `wallpapers`: the photographs of Debian's desktop background packages, each cut into
  `wallpaper_tiles` square tiles at random scales (2-100% of the largest square), so a few
  hundred large photos give many natural views at many zoom levels; 10% of the photos (by a
  hash of the name) are the validation slice.
- `photos`: scikit-image's sample photos, each as a whole square plus 2x2 and 3x3 zoomed tiles.
- `faces`: scikit-image's `lfw_subset` (200 tiny grey faces).
- `fashion`: Fashion-MNIST TRAIN split only (the t10k test split is never opened); its last
  `FASHION_VAL_COUNT` images are the validation slice. Labels are never read.
- `procedural`: dead leaves, random shapes and spectral noise (`procedural.py`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from extractor.distill import procedural
from extractor.distill.holdout import (
    CLIPART_ROOT,
    FASHION_VAL_COUNT,
    OOD_CLIPART_CATEGORIES,
    clipart_category,
    clipart_split,
    wallpaper_split,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "Corpus",
    "CorpusConfig",
    "Source",
    "build_corpus",
    "load_fashion_train",
    "square_on_white",
]

log = logging.getLogger(__name__)

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
# Debian's desktop background and wallpaper packages (gnome-, mate-, sway-backgrounds,
# plasma-workspace-wallpapers, ukui-wallpapers, lomiri-wallpapers*): a few hundred photographs.
WALLPAPER_ROOTS = (Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers"))
WALLPAPER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
WALLPAPER_MIN_SIDE = 480  # smaller files are icons and previews, not photographs
WALLPAPER_MAX_SIDE = 1600  # larger photos are reduced first (8K originals are slow to tile)
MAX_SOURCE_PIXELS = 40_000_000  # decode at most this many pixels per clip-art file
PHOTO_NAMES = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
# Sampling weight of each source in a training batch (renormalized over the sources present).
DEFAULT_WEIGHTS = {
    "clipart": 0.35,
    "wallpapers": 0.25,
    "procedural": 0.2,
    "photos": 0.08,
    "fashion": 0.08,
    "faces": 0.04,
}


@dataclass
class Source:
    name: str
    images: torch.Tensor  # (N, C, H, W) uint8, C in {1, 3}
    weight: float = 1.0

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class CorpusConfig:
    side: int = 160
    procedural_train: int = 6000
    procedural_val: int = 120
    seed: int = 0
    cache_dir: Path = Path("cache/distill")
    clipart_root: Path | None = CLIPART_ROOT  # None: no clip art
    fashion_root: Path | None = FASHION_ROOT  # None: no Fashion-MNIST
    clipart_exclude: tuple[str, ...] = OOD_CLIPART_CATEGORIES  # top-level folders never decoded
    wallpaper_roots: tuple[Path, ...] = WALLPAPER_ROOTS  # (): no wallpapers
    wallpaper_tiles: int = 48  # random-scale square tiles per training photo
    photos: bool = True
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    workers: int = 2


@dataclass
class Corpus:
    train: list[Source]
    val: list[Source]
    excluded: tuple[str, ...] = ()  # clip-art categories kept out whole (out-of-domain rows)

    def summary(self) -> dict[str, object]:
        """Counts per source, for logs and checkpoint provenance."""
        return {
            "train": {s.name: len(s) for s in self.train},
            "val": {s.name: len(s) for s in self.val},
            "weights": {s.name: round(s.weight, 4) for s in self.train},
            "heldout_rule": "extractor.distill.holdout (30% of clip art; Fashion-MNIST t10k)",
            "excluded_categories": sorted(self.excluded),
        }


def square_on_white(img: Image.Image, side: int) -> np.ndarray:
    """(side, side, 3) uint8: transparency composited on white, padded square, shrunk."""
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("RGB")
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def _load_clipart(args: tuple[str, int]) -> np.ndarray | None:
    path, side = args
    Image.MAX_IMAGE_PIXELS = MAX_SOURCE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_SOURCE_PIXELS:
                    return None
                img.load()
                return square_on_white(img, side)
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None


def _clipart(cfg: CorpusConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) uint8 (N, S, S, 3) arrays, cached; held-out files are never opened."""
    assert cfg.clipart_root is not None
    files = sorted(str(p) for p in Path(cfg.clipart_root).rglob("*.png"))
    files = [f for f in files if clipart_category(f) not in cfg.clipart_exclude]
    kept = [(f, clipart_split(f)) for f in files]
    kept = [(f, s) for f, s in kept if s != "heldout"]
    listing = "\n".join([str(cfg.side), str(MAX_SOURCE_PIXELS), *(f for f, _ in kept)])
    key = hashlib.sha256(listing.encode()).hexdigest()[:12]
    cache = Path(cfg.cache_dir) / f"clipart-{cfg.side}-{key}.npz"
    if cache.exists():
        z = np.load(cache)
        return z["train"], z["val"]
    log.info("decoding %d clip-art files into %s (once)", len(kept), cache)
    jobs = [(f, cfg.side) for f, _ in kept]
    if cfg.workers > 1:
        with get_context("fork").Pool(cfg.workers) as pool:
            arrays = pool.map(_load_clipart, jobs, chunksize=16)
    else:
        arrays = [_load_clipart(j) for j in jobs]
    train = [a for a, (_, s) in zip(arrays, kept, strict=True) if a is not None and s == "train"]
    val = [a for a, (_, s) in zip(arrays, kept, strict=True) if a is not None and s == "val"]
    empty = np.zeros((0, cfg.side, cfg.side, 3), np.uint8)
    tr = np.stack(train) if train else empty
    va = np.stack(val) if val else empty
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, train=tr, val=va)
    os.replace(tmp, cache)
    skipped = sum(a is None for a in arrays)
    (cache.with_suffix(".json")).write_text(json.dumps({"files": len(kept), "skipped": skipped}))
    return tr, va


def wallpaper_files(roots: Iterable[Path]) -> list[Path]:
    """The raster photographs under `roots`, sorted (vector art and tiny previews are not)."""
    found = (p for r in roots if Path(r).is_dir() for p in Path(r).rglob("*"))
    return sorted(p for p in found if p.suffix.lower() in WALLPAPER_SUFFIXES and p.is_file())


def _wallpaper_tiles(args: tuple[str, int, int]) -> np.ndarray | None:
    """(n, side, side, 3) random-scale square tiles of one photo, seeded by its name; or None."""
    path, side, n = args
    Image.MAX_IMAGE_PIXELS = MAX_SOURCE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_SOURCE_PIXELS:
                    return None
                img.draft("RGB", (WALLPAPER_MAX_SIDE, WALLPAPER_MAX_SIDE))  # JPEG: decode smaller
                rgb = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None
    factor = min(rgb.size) // WALLPAPER_MAX_SIDE
    if factor >= 2:  # a 2% tile of the reduced photo still has ~WALLPAPER_MAX_SIDE / 7 px a side
        rgb = rgb.reduce(factor)
    short = min(rgb.size)
    if short < WALLPAPER_MIN_SIDE:
        return None
    seed = int.from_bytes(hashlib.sha256(Path(path).name.encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    tiles = []
    for i in range(n):
        # The first tile is the largest centred square; the others' area is log-uniform in
        # [2%, 100%] of it, so fine textures and whole scenes are both represented.
        frac = 1.0 if i == 0 else float(np.exp(rng.uniform(np.log(0.02), 0.0)))
        t = max(8, round(short * frac**0.5))
        if i == 0:
            x0, y0 = (rgb.width - t) // 2, (rgb.height - t) // 2
        else:
            x0, y0 = (
                int(rng.integers(0, rgb.width - t + 1)),
                int(rng.integers(0, rgb.height - t + 1)),
            )
        box = (x0, y0, x0 + t, y0 + t)
        tile = rgb.resize((side, side), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        tiles.append(np.asarray(tile, np.uint8))
    return np.stack(tiles)


def _wallpapers(cfg: CorpusConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) uint8 (N, S, S, 3) tiles of the desktop-background photos, cached."""
    files = [str(p) for p in wallpaper_files(cfg.wallpaper_roots)]
    val_tiles = 4
    listing = "\n".join([str(cfg.side), str(cfg.wallpaper_tiles), str(val_tiles), *files])
    key = hashlib.sha256(listing.encode()).hexdigest()[:12]
    cache = Path(cfg.cache_dir) / f"wallpapers-{cfg.side}-{key}.npz"
    if cache.exists():
        z = np.load(cache)
        return z["train"], z["val"]
    log.info("cutting %d wallpapers into tiles in %s (once)", len(files), cache)
    splits = [wallpaper_split(f) for f in files]
    jobs = [(f, cfg.side, cfg.wallpaper_tiles if s == "train" else val_tiles)
            for f, s in zip(files, splits, strict=True)]  # fmt: skip
    if cfg.workers > 1:
        with get_context("fork").Pool(cfg.workers) as pool:
            arrays = pool.map(_wallpaper_tiles, jobs, chunksize=1)
    else:
        arrays = [_wallpaper_tiles(j) for j in jobs]
    empty = np.zeros((0, cfg.side, cfg.side, 3), np.uint8)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for a, s in zip(arrays, splits, strict=True):
        if a is not None:
            parts[s].append(a)
    tr = np.concatenate(parts["train"]) if parts["train"] else empty
    va = np.concatenate(parts["val"]) if parts["val"] else empty
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, train=tr, val=va)
    os.replace(tmp, cache)
    return tr, va


def load_fashion_train(root: Path) -> np.ndarray:
    """(60000, 28, 28) uint8 images of the Fashion-MNIST TRAIN split (never t10k)."""
    path = Path(root) / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as f:
        data = f.read()
    n, h, w = (int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(3))
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w).copy()


def _photo_views(img: np.ndarray, side: int) -> Iterable[np.ndarray]:
    """A whole padded view, then 2x2 and 3x3 grids of square tiles at higher zoom."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    pil = Image.fromarray(img[..., :3]) if img.shape[-1] != 4 else Image.fromarray(img, "RGBA")
    yield square_on_white(pil, side)
    rgb = pil.convert("RGB")
    for k in (2, 3):
        scale = k * side / min(rgb.size)
        big = rgb.resize(
            (round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS
        )
        ox, oy = (big.width - k * side) // 2, (big.height - k * side) // 2
        for i in range(k):
            for j in range(k):
                box = (ox + j * side, oy + i * side, ox + (j + 1) * side, oy + (i + 1) * side)
                yield np.asarray(big.crop(box), np.uint8)


def _photos(side: int) -> tuple[np.ndarray, np.ndarray]:
    """(photo tiles (N, S, S, 3), lfw faces (200, 25, 25)) from scikit-image's bundled data."""
    from skimage import data

    views: list[np.ndarray] = []
    for name in PHOTO_NAMES:
        img = np.asarray(getattr(data, name)())
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        views.extend(_photo_views(img, side))
    faces = (np.clip(data.lfw_subset(), 0, 1) * 255).astype(np.uint8)
    return np.stack(views), faces


def _chw(a: np.ndarray) -> torch.Tensor:
    """(N, H, W[, 3]) uint8 -> contiguous (N, C, H, W) uint8 tensor."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return (t.unsqueeze(1) if t.dim() == 3 else t.permute(0, 3, 1, 2)).contiguous()


def build_corpus(cfg: CorpusConfig) -> Corpus:
    """Load (or build and cache) every enabled source; deterministic for a given config."""
    train: list[Source] = []
    val: list[Source] = []
    if cfg.clipart_root is not None:
        tr, va = _clipart(cfg)
        train.append(Source("clipart", _chw(tr)))
        val.append(Source("clipart", _chw(va)))
    if cfg.wallpaper_roots:
        tr, va = _wallpapers(cfg)
        train.append(Source("wallpapers", _chw(tr)))
        val.append(Source("wallpapers", _chw(va)))
    if cfg.fashion_root is not None:
        fm = load_fashion_train(cfg.fashion_root)
        train.append(Source("fashion", _chw(fm[:-FASHION_VAL_COUNT])))
        val.append(Source("fashion", _chw(fm[-FASHION_VAL_COUNT:])))
    if cfg.photos:
        tiles, faces = _photos(cfg.side)
        train.append(Source("photos", _chw(tiles)))
        train.append(Source("faces", _chw(faces)))
    if cfg.procedural_train:
        kinds = "-".join(procedural.KINDS)  # a new generator family is a new cache file
        name = f"procedural-{cfg.side}-{cfg.procedural_train}-{cfg.seed}-{kinds}.npy"
        proc_cache = Path(cfg.cache_dir) / name
        if proc_cache.exists():
            proc = np.load(proc_cache)
        else:
            proc = procedural.generate(cfg.procedural_train, cfg.side, cfg.seed)
            proc_cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = proc_cache.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, proc)
            os.replace(tmp, proc_cache)
        train.append(Source("procedural", _chw(proc)))
    if cfg.procedural_val:
        pv = procedural.generate(cfg.procedural_val, cfg.side, cfg.seed + 1_000_003)
        val.append(Source("procedural", _chw(pv)))
    train = [s for s in train if len(s) > 0]
    val = [s for s in val if len(s) > 0]
    if not train:
        raise ValueError("the distillation corpus is empty: enable at least one source")
    total = sum(cfg.weights.get(s.name, 0.0) for s in train)
    if total <= 0:
        raise ValueError(f"no positive sampling weight for sources {[s.name for s in train]}")
    for s in train:
        s.weight = cfg.weights.get(s.name, 0.0) / total
    excluded = tuple(cfg.clipart_exclude) if cfg.clipart_root is not None else ()
    return Corpus(train=train, val=val, excluded=excluded)
