"""Small re-encoded previews of stored images (docs/architecture.md, "Thumbnails").

A thumbnail is decoded from the stored bytes through the same bounded header check as an upload
(`extractor.imaging`: allow-listed formats, declared pixels checked before any pixel is decoded)
and encoded afresh, so the original bytes (and anything a polyglot file hides in them) never
come back. A JPEG is decoded at 1/2, 1/4 or 1/8 scale when that is still at least the size asked
for (`Image.draft`), so a 40 Mpx photo costs a fraction of its full decode.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps

from extractor.imaging import ImageRejected, _open_allowed, _to_rgb

MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 32, 256, 128
# At most this many thumbnails decode at once in one API process (each in a worker thread):
# a page of a hundred previews must not take every thread the other routes need.
CONCURRENCY = 2
JPEG_QUALITY = 80
# Bump when the encoding changes, so browsers do not keep a thumbnail made the old way.
ENCODING_VERSION = "t1"

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    media_type: str


def etag(sha256: str, size: int) -> str:
    """A strong validator: the stored bytes are content-addressed and the encoding is fixed."""
    return f'"{ENCODING_VERSION}-{sha256}-{size}"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """Whether an `If-None-Match` header names `tag` (weak comparison, lists and `*` too)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == tag:
            return True
    return False


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )


def render(data: bytes, size: int, *, max_pixels: int) -> Thumbnail:
    """Fit the image within size x size (never enlarged), in display orientation: PNG when it
    has transparency, else JPEG. Raises ImageRejected for bytes that no longer decode (a lower
    pixel limit than when they were uploaded, say)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # as in decode_image: truncation must fail
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    img = _open_allowed(data, "stored image", max_pixels)
    try:
        if img.format in ("JPEG", "MPO"):
            img.draft(None, (size, size))  # DCT scaling: never below the size asked for
        img.load()
        img = ImageOps.exif_transpose(img) or img
        if _has_alpha(img):
            img = img.convert("RGBA")
            fmt, media_type = "PNG", "image/png"
        else:
            img = _to_rgb(img)
            fmt, media_type = "JPEG", "image/jpeg"
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        if fmt == "PNG":
            img.save(out, "PNG", optimize=False)
        else:
            img.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(
            "stored image",
            f"the image decodes to more than {max_pixels} pixels",
            413,
            "image_too_large",
        ) from None
    except Exception as exc:  # OSError "truncated", SyntaxError, ValueError from decoders
        raise ImageRejected(
            "stored image", f"the image does not decode ({exc})", 422, "invalid_image"
        ) from None
    return Thumbnail(out.getvalue(), media_type)
