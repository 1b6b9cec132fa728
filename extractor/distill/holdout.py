"""The one rule that keeps the transfer benchmark's test images out of the distillation corpus.

Both `extractor.distill.corpus` (what the student may learn from) and `bench/transfer` (what the
heads are tested on) call these functions, so the split cannot drift between them.

- openclipart: a file's bucket is sha256(its path relative to the openclipart png root) mod 100.
  Buckets 0..29 (30% of every category, in expectation) are HELD OUT: never distilled on; the
  transfer test sets are drawn only from them. Buckets 30..32 are the distillation VALIDATION
  slice (held-out teacher agreement; never trained on either). The rest is distillation TRAIN.
- openclipart, whole categories: the top-level folders in `OOD_CLIPART_CATEGORIES` are left out
  of the corpus entirely (no bucket of them is decoded), so `bench/transfer` can test on a domain
  the extractor never saw (its out-of-domain rows). Extractors distilled before this rule
  existed did see 70% of them; the benchmark marks that.
- Fashion-MNIST: the official test split (t10k) is never read by the distillation corpus; of the
  training split, the last `FASHION_VAL_COUNT` images are the distillation validation slice.
- Wallpapers (Debian's desktop background packages): a photo's bucket is sha256(file name) mod
  100; buckets below `VAL_PERCENT_PHOTOS` are the validation slice, the rest is training data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Literal

__all__ = [
    "CLIPART_ROOT",
    "FASHION_VAL_COUNT",
    "HELDOUT_PERCENT",
    "OOD_CLIPART_CATEGORIES",
    "clipart_bucket",
    "clipart_category",
    "clipart_key",
    "clipart_split",
    "is_heldout_clipart",
    "is_ood_clipart",
    "wallpaper_split",
]

CLIPART_ROOT = Path("/usr/share/openclipart/png")
HELDOUT_PERCENT = 30  # share of each openclipart category reserved for transfer testing
VAL_PERCENT = 3  # distillation validation slice, right after the held-out buckets
FASHION_VAL_COUNT = 256  # last images of the Fashion-MNIST TRAIN split used for validation
# Natural objects on white: the out-of-domain transfer task's categories, never distilled on.
OOD_CLIPART_CATEGORIES = ("animals", "food", "plants")
VAL_PERCENT_PHOTOS = 10

Split = Literal["heldout", "val", "train"]


def clipart_key(path: str | Path) -> str:
    """The hashed identity of a clip-art file: its POSIX path relative to the png root.

    Absolute paths under `CLIPART_ROOT` are made relative, so the rule does not depend on where
    the package is installed or on how a caller spells the root; relative paths are used as-is.
    """
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.relative_to(CLIPART_ROOT)
        except ValueError:
            parts = p.parts
            if "png" not in parts:
                raise ValueError(f"{path} is not under an openclipart png root") from None
            p = Path(*parts[len(parts) - parts[::-1].index("png") :])
    return str(PurePosixPath(*p.parts))


def clipart_bucket(path: str | Path) -> int:
    """Deterministic bucket 0..99 of a clip-art file."""
    digest = hashlib.sha256(clipart_key(path).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100


def clipart_split(path: str | Path) -> Split:
    """'heldout' (transfer test only), 'val' (distillation validation) or 'train'."""
    b = clipart_bucket(path)
    if b < HELDOUT_PERCENT:
        return "heldout"
    if b < HELDOUT_PERCENT + VAL_PERCENT:
        return "val"
    return "train"


def is_heldout_clipart(path: str | Path) -> bool:
    """True for the clip-art files the distillation corpus must never contain."""
    return clipart_bucket(path) < HELDOUT_PERCENT


def clipart_category(path: str | Path) -> str:
    """The top-level openclipart folder of a file ("animals", "food", ...)."""
    return PurePosixPath(clipart_key(path)).parts[0]


def is_ood_clipart(path: str | Path) -> bool:
    """True for files of the categories kept out of the corpus whole (out-of-domain rows)."""
    return clipart_category(path) in OOD_CLIPART_CATEGORIES


def wallpaper_split(path: str | Path) -> Split:
    """'val' or 'train' for a desktop-background photo, by a hash of its file name."""
    digest = hashlib.sha256(Path(path).name.encode("utf-8")).digest()
    return "val" if int.from_bytes(digest[:8], "big") % 100 < VAL_PERCENT_PHOTOS else "train"
