"""Safe image decoding and preprocessing, shared by the extractor process and the service.

Untrusted uploads go through `decode_image` (docs/architecture.md, "Untrusted input"):
truncated files are caught by a full `load()` (``Image.verify()`` passes them), the declared
pixel count is checked from the header *before* any pixel is decoded, only an allow-list of
formats is opened, and every accepted image comes out as 8-bit RGB in display orientation.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageRejected",
    "decode_image",
    "load_tensor",
    "normalize",
    "preprocess",
    "preprocess_batch",
]

# Pillow decoders we expose to the internet (the JPEG plugin also yields MPO, cameras' JPEG).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# 40 Mpx covers phone and DSLR photos; one RGB copy of it is 120 MB.
DEFAULT_MAX_PIXELS = 40_000_000

# Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; a warning is not a limit.
warnings.simplefilter("error", Image.DecompressionBombWarning)

# Formats Pillow cannot open at all but that users upload anyway: give them a 415, not a 422.
_FOREIGN_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"SIMPLE  =", "FITS"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
    (b"PK\x03\x04", "ZIP"),
)


class ImageRejected(Exception):
    """An upload that cannot be used as an image; `status` is the HTTP status to answer.

    413 too many pixels, 415 format outside the allow-list, 422 corrupt, truncated or not an image.
    """

    def __init__(self, filename: str, reason: str, status: int, code: str) -> None:
        super().__init__(f"{filename}: {reason}")
        self.filename = filename
        self.reason = reason
        self.status = status
        self.code = code


def _sniff_format(head: bytes) -> str | None:
    """Name the format from magic bytes only (each plugin's `accept`); nothing is parsed."""
    for magic, name in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return name
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIF/AVIF"
    Image.init()
    for name, (_factory, accept) in Image.OPEN.items():
        if accept is None:
            continue
        try:
            if accept(head):
                return name
        except Exception:  # a plugin's accept() is not meant for arbitrary bytes
            continue
    return None


def _open_allowed(data: bytes, filename: str, max_pixels: int) -> Image.Image:
    """Parse the header of an allowed format and check its size; decodes no pixel data."""
    if not data:
        raise ImageRejected(filename, "the file is empty", 422, "empty_image")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(
            filename, f"the image declares more than {max_pixels} pixels", 413, "image_too_large"
        ) from None
    except UnidentifiedImageError:
        fmt = _sniff_format(data[:64])
        if fmt is not None and fmt not in ALLOWED_FORMATS:
            raise ImageRejected(
                filename,
                f"{fmt} is not an accepted image format (accepted: {', '.join(ALLOWED_FORMATS)})",
                415,
                "unsupported_image_format",
            ) from None
        raise ImageRejected(
            filename, "the file is not a readable image", 422, "invalid_image"
        ) from None
    except Exception as exc:  # malformed header inside an allowed plugin
        raise ImageRejected(
            filename, f"the image header is corrupt ({exc})", 422, "invalid_image"
        ) from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected(filename, "the image has no pixels", 422, "invalid_image")
    if width * height > max_pixels:
        raise ImageRejected(
            filename,
            f"the image declares {width}x{height} pixels, over the limit of {max_pixels}",
            413,
            "image_too_large",
        )
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any decoded mode to 8-bit RGB; alpha is composited on white."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Wide grey: scale the full 16-bit range to 8 bits (Pillow's convert("L") clips at 255).
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0
        arr = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")


def decode_image(
    data: bytes,
    filename: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> Image.Image:
    """Decode untrusted bytes into an RGB image in display orientation, or raise ImageRejected.

    `min_side`: the caller only needs a shorter side of this many pixels, so a JPEG may be
    decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, `Image.draft`) as long as both sides
    stay at least that long; other formats always decode whole.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global someone may have flipped; truncation must fail
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    img = _open_allowed(data, filename, max_pixels)
    try:
        if min_side is not None and img.format in ("JPEG", "MPO"):
            img.draft(img.mode, (min_side, min_side))
        img.load()
        img = ImageOps.exif_transpose(img) or img
        rgb = _to_rgb(img)
        rgb.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(
            filename, f"the image decodes to more than {max_pixels} pixels", 413, "image_too_large"
        ) from None
    except Exception as exc:  # OSError "truncated", SyntaxError, ValueError from decoders
        raise ImageRejected(
            filename, f"the image is truncated or corrupt ({exc})", 422, "invalid_image"
        ) from None
    return rgb


def _resize_side(pretrained_cfg: dict[str, Any]) -> int:
    """The side `preprocess` resizes an image's shorter side to."""
    _, out_h, out_w = (int(v) for v in pretrained_cfg["input_size"])
    return int(pretrained_cfg.get("resize", max(out_h, out_w)))


def preprocess(img: Image.Image, pretrained_cfg: dict[str, Any]) -> torch.Tensor:
    """timm-style eval transform: resize the shorter side, center crop, scale to [0,1], normalise.

    Returns a float32 tensor (3, H, W) with H, W from `pretrained_cfg["input_size"]`.
    """
    _, out_h, out_w = (int(v) for v in pretrained_cfg["input_size"])
    resize = _resize_side(pretrained_cfg)
    interpolation = {
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "nearest": Image.Resampling.NEAREST,
    }[pretrained_cfg.get("interpolation", "bilinear")]
    w, h = img.size
    scale = resize / min(w, h)
    new_w, new_h = max(out_w, round(w * scale)), max(out_h, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), interpolation)
    left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
    img = img.crop((left, top, left + out_w, top + out_h))
    x = np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1), dtype=np.float32)  # (3, H, W)
    x /= np.float32(255.0)
    return torch.from_numpy(_standardize(x, *_mean_std(pretrained_cfg)))


_MEAN_STD: dict[tuple[tuple[float, ...], tuple[float, ...]], tuple[np.ndarray, np.ndarray]] = {}


def _mean_std(pretrained_cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """`pretrained_cfg`'s mean and std as float32 (C, 1, 1) arrays, made once per pair."""
    key = (tuple(pretrained_cfg["mean"]), tuple(pretrained_cfg["std"]))
    found = _MEAN_STD.get(key)
    if found is None:
        found = (
            np.asarray(key[0], dtype=np.float32).reshape(-1, 1, 1),
            np.asarray(key[1], dtype=np.float32).reshape(-1, 1, 1),
        )
        _MEAN_STD[key] = found
    return found


_Array = TypeVar("_Array", np.ndarray, torch.Tensor)


def _standardize(x: _Array, mean: _Array, std: _Array) -> _Array:
    """Per channel `(x - mean) / std`, in place on `x`: the one place of the arithmetic, for a
    numpy array (`preprocess`: one served image, without torch's per-call dispatch and thread
    pool) and a torch tensor (`normalize`) alike, so both give the same bits
    (tests/extractor/test_imaging.py checks every 8-bit value)."""
    x -= mean
    x /= std
    return x


def normalize(images: torch.Tensor, pretrained_cfg: dict[str, Any]) -> torch.Tensor:
    """RGB in [0, 1], channels first ((3, H, W) or (B, 3, H, W)) -> network input.

    Per channel `(x - mean) / std` with the architecture's `pretrained_cfg`, for tensors on any
    device (distillation views, BN calibration); `preprocess` normalises a served image with the
    same `_mean_std` and `_standardize` in numpy. `images` is not modified.
    """
    mean, std = (torch.from_numpy(c).to(images.device) for c in _mean_std(pretrained_cfg))
    x = images.to(torch.promote_types(images.dtype, mean.dtype), copy=True)
    return _standardize(x, mean, std)


# A served JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling averages, it does not
# skip pixels) as long as its shorter side stays at least this many times the side `preprocess`
# resizes to. Measured (bench/results/profile.md, "JPEG decoding"): decode + preprocess of the
# load benchmark's photos in half the time; the default's features kept a mean cosine of 0.998 to
# the full decode's; and float heads trained on full-decode features scored the same top-1 on
# 640 px JPEGs decoded either way (clipart_ood, 3 seeds: 36.6% against 36.4%).
JPEG_DRAFT_FACTOR = 1


def load_tensor(
    data: bytes,
    filename: str,
    pretrained_cfg: dict[str, Any],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """decode_image + preprocess: the whole path from upload bytes to a network input (3, H, W)."""
    side = JPEG_DRAFT_FACTOR * _resize_side(pretrained_cfg)
    img = decode_image(data, filename, max_pixels=max_pixels, min_side=side)
    return preprocess(img, pretrained_cfg)


def decoded_pixels(
    data: bytes,
    filename: str,
    pretrained_cfg: dict[str, Any],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> int:
    """How many pixels `load_tensor` will decode (a JPEG at its reduced scale), from the header
    alone; ImageRejected as `load_tensor` would for a bad header."""
    img = _open_allowed(data, filename, max_pixels)
    try:
        if img.format in ("JPEG", "MPO"):
            side = JPEG_DRAFT_FACTOR * _resize_side(pretrained_cfg)
            img.draft(img.mode, (side, side))  # sets the size it would decode at; decodes nothing
        width, height = img.size
    finally:
        img.close()
    return int(width * height)


def preprocess_batch(
    files: Sequence[tuple[str, bytes]],
    pretrained_cfg: dict[str, Any],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """(filename, bytes) pairs -> (B, 3, H, W); the first bad file raises ImageRejected."""
    tensors = [load_tensor(d, name, pretrained_cfg, max_pixels=max_pixels) for name, d in files]
    return torch.stack(tensors)
