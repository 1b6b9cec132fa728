"""Builders for good and bad uploads, generated in the test so every byte is explained."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image


def png(
    w: int = 8,
    h: int = 8,
    color: tuple[int, ...] | int = (200, 30, 30),
    mode: str = "RGB",
    **save: object,
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, "PNG", **save)
    return buf.getvalue()


def jpeg(
    w: int = 16,
    h: int = 8,
    color: tuple[int, ...] = (10, 120, 240),
    mode: str = "RGB",
    **save: object,
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, "JPEG", **save)
    return buf.getvalue()


def noise_png(seed: int, size: int = 48) -> bytes:
    """A size x size RGB PNG of seeded uniform noise: decodes fine, features far from flat."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def distinct_pngs(n: int, start: int = 0) -> list[bytes]:
    """n images with different bytes (hence different SHA-256s)."""
    return [png(color=((start + i) % 256, (start + i) // 256 % 256, 7)) for i in range(n)]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_pixel_bomb(side: int = 13_000) -> bytes:
    """A few hundred bytes declaring side x side RGB pixels (169 Mpx for 13000)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


def noisy_jpeg(w: int = 64, h: int = 64) -> bytes:
    """A JPEG with real entropy, so truncating it cuts scan data (not only the trailer)."""
    import numpy as np

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def exif_rotated_jpeg(w: int = 40, h: int = 20) -> bytes:
    """Stored w x h with EXIF orientation 6 (rotate 90): displayed h x w."""
    img = Image.new("RGB", (w, h), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


# --- zip archives -------------------------------------------------------------------------------


def zip_of(entries: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buf.getvalue()


def zip_with_symlink(target: str = "/etc/passwd") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("daisy/ok.png", png())
        info = zipfile.ZipInfo("daisy/link.png")
        info.create_system = 3  # unix: external_attr holds st_mode
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, target)
    return buf.getvalue()


def _patch_records(data: bytes, fn: Callable[[bytearray, int, str], None]) -> bytes:
    """Apply fn(buffer, offset, kind) to every local ('L') and central ('C') header."""
    out = bytearray(data)
    i = out.find(b"PK\x03\x04")
    while i != -1:
        fn(out, i, "L")
        i = out.find(b"PK\x03\x04", i + 4)
    i = out.find(b"PK\x01\x02")
    while i != -1:
        fn(out, i, "C")
        i = out.find(b"PK\x01\x02", i + 4)
    return bytes(out)


def zip_encrypted() -> bytes:
    """The encryption flag set on an entry (what a password-protected zip carries)."""

    def flag(buf: bytearray, at: int, kind: str) -> None:
        pos = at + (6 if kind == "L" else 8)
        buf[pos] |= 0x01

    return _patch_records(zip_of({"daisy/a.png": png()}), flag)


def zip_forged_size(real: bytes, declared: int) -> bytes:
    """One deflated entry whose headers claim `declared` uncompressed bytes."""

    def size(buf: bytearray, at: int, kind: str) -> None:
        pos = at + (22 if kind == "L" else 24)
        buf[pos : pos + 4] = struct.pack("<I", declared)

    return _patch_records(zip_of({"daisy/a.png": real}, zipfile.ZIP_DEFLATED), size)
