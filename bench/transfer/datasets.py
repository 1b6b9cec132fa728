"""The transfer tasks, built from Debian packages with deterministic splits.

Each task says whether the extractor's distillation corpus draws on its domain:

1. `clipart_ood` (out-of-domain): natural objects on white, the openclipart categories that the
   corpus leaves out whole (`extractor.distill.holdout.OOD_CLIPART_CATEGORIES`: animals, food,
   plants), one class per subfolder with at least 20 images; half of each class (by a hash of
   the path) is the test set; `clipart_ood_swap` is the other fold (the halves swapped).
   Extractors distilled before that rule (the v1-v4 defaults) saw 70% of these images, so for
   them this row is flattering.
2. `clipart` (in-distribution): clip-art subfolders of categories the corpus does draw on; its
   TEST images are exactly the files the corpus holds out (`is_heldout_clipart`).
3. `fashion_mnist` (in-distribution: its train split is in the corpus): 100 labelled training
   images per class; the official t10k test set (never in the corpus) for testing.

Images are returned as uint8 RGB arrays, padded square on white and cached under cache/transfer.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from extractor.distill.holdout import OOD_CLIPART_CATEGORIES, clipart_bucket, is_heldout_clipart

CLIPART_ROOT = Path("/usr/share/openclipart/png")
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path("cache/transfer")
SIDE = 160  # cached side; the extractors resize from here
# In-distribution: subfolders with at least ~30 images of categories the corpus draws on.
CLIPART_CLASSES = [
    "transportation/vehicles",
    "transportation/boating",
    "transportation/roadsigns",
    "recreation/music",
    "recreation/sports",
    "recreation/toys",
    "people/clothing",
    "people/smilies",
    "tools/weapons",
    "electronics",
]
OOD_MIN_IMAGES = 20  # smaller subfolders are too few to split into train and test
OOD_TEST_PERCENT = 50
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
    out_of_domain: bool = False  # True: the distillation corpus never draws on this domain

    def describe(self) -> str:
        domain = "out-of-domain" if self.out_of_domain else "in-distribution"
        return (
            f"{self.name} ({domain}): {len(self.labels)} classes, {len(self.y_train)} train / "
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


def _clipart_split_task(
    name: str, files: list[tuple[Path, int]], labels: list[str], is_test, ood: bool
) -> Task:  # type: ignore[no-untyped-def]
    """Decode (cached) and split labelled clip-art files; `is_test(path)` picks the test set."""
    key = hashlib.sha256("\n".join(str(p) for p, _ in files).encode()).hexdigest()[:12]
    cache = CACHE / f"{name}-{key}.npz"
    if cache.exists():
        z = np.load(cache)
        return Task(name, labels, z["xtr"], z["ytr"], z["xte"], z["yte"], ood)
    train: list[tuple[np.ndarray, int]] = []
    test: list[tuple[np.ndarray, int]] = []
    for path, label in files:
        arr = _load_clipart(path)
        if arr is not None:
            (test if is_test(path) else train).append((arr, label))
    xtr, ytr = np.stack([a for a, _ in train]), np.array([y for _, y in train], dtype=np.int64)
    xte, yte = np.stack([a for a, _ in test]), np.array([y for _, y in test], dtype=np.int64)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    return Task(name, labels, xtr, ytr, xte, yte, ood)


def clipart_task() -> Task:
    """In-distribution clip art: test = the files the corpus holds out of these categories."""
    files = sorted(
        (p, i) for i, cls in enumerate(CLIPART_CLASSES) for p in (CLIPART_ROOT / cls).rglob("*.png")
    )
    labels = [c.split("/")[-1] for c in CLIPART_CLASSES]
    return _clipart_split_task("clipart", files, labels, is_heldout_clipart, ood=False)


def clipart_ood_classes() -> list[str]:
    """Subfolders of the excluded categories with enough images to split, sorted."""
    folders = sorted(
        d.relative_to(CLIPART_ROOT).as_posix()
        for c in OOD_CLIPART_CATEGORIES
        for d in (CLIPART_ROOT / c).iterdir()
        if d.is_dir()
    )
    return [
        f for f in folders if sum(1 for _ in (CLIPART_ROOT / f).rglob("*.png")) >= OOD_MIN_IMAGES
    ]


def clipart_ood_task() -> Task:
    """Out-of-domain clip art: categories the corpus never decodes; half of each is the test."""
    classes = clipart_ood_classes()
    files = sorted(
        (p, i) for i, cls in enumerate(classes) for p in (CLIPART_ROOT / cls).rglob("*.png")
    )
    labels = [c.split("/")[-1] for c in classes]
    is_test = lambda p: clipart_bucket(p) < OOD_TEST_PERCENT  # noqa: E731
    return _clipart_split_task("clipart_ood", files, labels, is_test, ood=True)


def swapped(task: Task) -> Task:
    """The other fold of a two-way split: train on the test half, test on the training half.
    With a few hundred test images a recipe's 3-seed mean moves by 1-2 points with the split;
    both folds side by side make a difference of that size visible as noise
    (`--tasks clipart_ood,clipart_ood_swap`)."""
    return Task(
        f"{task.name}_swap",
        task.labels,
        task.x_test,
        task.y_test,
        task.x_train,
        task.y_train,
        task.out_of_domain,
    )


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
