"""The transfer tasks, built from Debian packages with deterministic splits.

1. `clipart`: a fine-grained task over openclipart subfolders (animals, food, plants, vehicles).
   Its TEST images are exactly the clip-art files that the distillation corpus holds out
   (`extractor.distill.holdout.is_heldout_clipart`), so the extractor never saw them.
2. `fashion_mnist`: 100 labelled training images per class from the official training split;
   the official t10k test set (never in the distillation corpus) for testing.

Images are returned as uint8 RGB arrays, padded square on white and cached under cache/transfer.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from extractor.distill.holdout import is_heldout_clipart

CLIPART_ROOT = Path("/usr/share/openclipart/png")
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path("cache/transfer")
SIDE = 160  # cached side; the extractors resize from here
# Subfolders with at least ~30 images each: animals, food, plants and vehicles.
CLIPART_CLASSES = [
    "animals/mammals",
    "animals/birds",
    "animals/bugs",
    "food/fruit",
    "food/desserts",
    "food/beverages",
    "food/meats_and_eggs",
    "plants/flowers",
    "transportation/vehicles",
    "transportation/boating",
]
FASHION_LABELS = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]  # fmt: skip
MAX_SOURCE_PIXELS = 64_000_000


@dataclass
class Task:
    name: str
    labels: list[str]
    x_train: np.ndarray  # (N, S, S, 3) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.labels)} classes, {len(self.y_train)} train / "
            f"{len(self.y_test)} test images"
        )


def square_on_white(img: Image.Image, side: int = SIDE) -> np.ndarray:
    """RGBA/LA/P composited on white, padded to a square, resized to side x side."""
    img.draft("RGB", (side * 2, side * 2))
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("RGB")
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def _load_clipart(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_SOURCE_PIXELS:
                return None
            return square_on_white(img)
    except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None


def clipart_task() -> Task:
    files = sorted(
        (p, i) for i, cls in enumerate(CLIPART_CLASSES) for p in (CLIPART_ROOT / cls).rglob("*.png")
    )
    key = hashlib.sha256("\n".join(str(p) for p, _ in files).encode()).hexdigest()[:12]
    cache = CACHE / f"clipart-{key}.npz"
    if cache.exists():
        z = np.load(cache)
        return Task("clipart", _labels(), z["xtr"], z["ytr"], z["xte"], z["yte"])
    train: list[tuple[np.ndarray, int]] = []
    test: list[tuple[np.ndarray, int]] = []
    for path, label in files:
        arr = _load_clipart(path)
        if arr is not None:
            (test if is_heldout_clipart(path) else train).append((arr, label))
    xtr, ytr = np.stack([a for a, _ in train]), np.array([y for _, y in train], dtype=np.int64)
    xte, yte = np.stack([a for a, _ in test]), np.array([y for _, y in test], dtype=np.int64)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    return Task("clipart", _labels(), xtr, ytr, xte, yte)


def _labels() -> list[str]:
    return [c.split("/")[-1] for c in CLIPART_CLASSES]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_task(per_class: int = 100, test_limit: int | None = None, seed: int = 0) -> Task:
    xtr_all = _read_idx(FASHION_ROOT / "train-images-idx3-ubyte.gz")
    ytr_all = _read_idx(FASHION_ROOT / "train-labels-idx1-ubyte.gz").astype(np.int64)
    xte = _read_idx(FASHION_ROOT / "t10k-images-idx3-ubyte.gz")
    yte = _read_idx(FASHION_ROOT / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(ytr_all == c), per_class, replace=False) for c in range(10)]
    )
    if test_limit is not None and test_limit < len(yte):
        keep = np.sort(rng.choice(len(yte), test_limit, replace=False))
        xte, yte = xte[keep], yte[keep]
    to_rgb = lambda x: np.repeat(x[..., None], 3, axis=-1)  # noqa: E731  (gray -> RGB)
    return Task(
        "fashion_mnist", FASHION_LABELS, to_rgb(xtr_all[idx]), ytr_all[idx], to_rgb(xte), yte
    )
