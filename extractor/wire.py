"""The feature wire format (`application/x-headhub-features`): both feature forms, no JSON floats.

Layout, all integers little-endian:

    offset  size  field
    0       4     magic  b"HHFT"
    4       2     version (1)
    6       2     header_len H: bytes before the float block, a multiple of 8
    8       4     B: number of vectors
    12      4     D: feature width
    16      2     L: length of the extractor id
    18      L     extractor id, ASCII (SHA-256 hex of the checkpoint file)
    18+L    ...   zero padding up to H
    H       4*B*D float32 features, row-major (the paper's (b): input of a float last layer)
    H+4BD   B*ceil(D/8) packed sign bits, row-major (the paper's (a)), `extractor.packing` order

A reader needs only `struct` and `numpy.frombuffer`; the total size is exact, so a truncated or
padded body is detected.

The request the API and the worker send (`application/x-headhub-images`), the images as they
arrived, framed instead of multipart (no boundary search, no temporary files):

    0       4     magic  b"HHIM"
    4       2     version (1)
    6       2     N: number of images
    then N times: 2 name length n, n bytes UTF-8 file name, 4 length m, m bytes of the file

`POST /v1/features` takes it beside multipart; `decode_images` checks every length against the
body, so a truncated or padded body is refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from extractor.packing import packed_width

__all__ = [
    "CONTENT_TYPE",
    "IMAGES_CONTENT_TYPE",
    "MAGIC",
    "VERSION",
    "FeatureBatch",
    "WireFormatError",
    "decode_features",
    "decode_images",
    "encode_features",
    "encode_images",
]

CONTENT_TYPE = "application/x-headhub-features"
MAGIC = b"HHFT"
VERSION = 1
_FIXED = struct.Struct("<4sHHIIH")  # magic, version, header_len, B, D, id_len
_MAX_ID_LEN = 256
IMAGES_CONTENT_TYPE = "application/x-headhub-images"
IMAGES_MAGIC = b"HHIM"
_IMAGES_FIXED = struct.Struct("<4sHH")  # magic, version, N
_NAME_LEN = struct.Struct("<H")
_DATA_LEN = struct.Struct("<I")


class WireFormatError(ValueError):
    """Bytes that are not a well-formed feature batch of this version."""


@dataclass(frozen=True)
class FeatureBatch:
    """B feature vectors from one extractor, in both forms (float and packed sign bits)."""

    extractor_id: str
    floats: np.ndarray  # (B, D) float32
    bits: np.ndarray  # (B, ceil(D/8)) uint8

    def __post_init__(self) -> None:
        if self.floats.ndim != 2 or self.bits.ndim != 2:
            raise ValueError("floats and bits must be 2-D (B, D) and (B, ceil(D/8))")
        b, d = self.floats.shape
        if self.bits.shape != (b, packed_width(d)):
            raise ValueError(f"bits shape {self.bits.shape} does not match floats {(b, d)}")

    @property
    def dim(self) -> int:
        return int(self.floats.shape[1])

    def __len__(self) -> int:
        return int(self.floats.shape[0])


def _header_len(id_len: int) -> int:
    return (_FIXED.size + id_len + 7) // 8 * 8


def encode_features(batch: FeatureBatch) -> bytes:
    """Serialise a FeatureBatch; floats are written as little-endian float32 whatever the dtype."""
    ident = batch.extractor_id.encode("ascii")
    if len(ident) > _MAX_ID_LEN:
        raise ValueError("extractor id too long")
    b, d = batch.floats.shape
    hlen = _header_len(len(ident))
    header = _FIXED.pack(MAGIC, VERSION, hlen, b, d, len(ident)) + ident
    header += b"\0" * (hlen - len(header))
    floats = np.ascontiguousarray(batch.floats, dtype="<f4").tobytes()
    bits = np.ascontiguousarray(batch.bits, dtype=np.uint8).tobytes()
    return header + floats + bits


def decode_features(data: bytes) -> FeatureBatch:
    """Parse and check a body; raises WireFormatError on any inconsistency (never returns junk)."""
    if len(data) < _FIXED.size:
        raise WireFormatError(f"{len(data)} bytes is shorter than the header")
    magic, version, hlen, b, d, id_len = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise WireFormatError(f"bad magic {magic!r}")
    if version != VERSION:
        raise WireFormatError(f"unsupported wire version {version}")
    if id_len > _MAX_ID_LEN or hlen != _header_len(id_len):
        raise WireFormatError(f"inconsistent header length {hlen} for an id of {id_len} bytes")
    n_floats, n_bits = 4 * b * d, b * packed_width(d)
    if len(data) != hlen + n_floats + n_bits:
        raise WireFormatError(
            f"body is {len(data)} bytes; B={b}, D={d} needs {hlen + n_floats + n_bits}"
        )
    try:
        extractor_id = data[_FIXED.size : _FIXED.size + id_len].decode("ascii")
    except UnicodeDecodeError as exc:
        raise WireFormatError("extractor id is not ASCII") from exc
    floats = np.frombuffer(data, dtype="<f4", count=b * d, offset=hlen).reshape(b, d)
    bits = np.frombuffer(data, dtype=np.uint8, count=n_bits, offset=hlen + n_floats)
    return FeatureBatch(
        extractor_id=extractor_id,
        floats=floats.astype(np.float32),  # native-endian, writable copy
        bits=bits.reshape(b, packed_width(d)).copy(),
    )


def encode_images(files: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> bytes:
    """(file name, bytes) pairs -> an `application/x-headhub-images` body."""
    if len(files) > 0xFFFF:
        raise ValueError("at most 65535 images per request")
    out = [_IMAGES_FIXED.pack(IMAGES_MAGIC, VERSION, len(files))]
    for name, data in files:
        raw = name.encode("utf-8", "replace")[:1024]
        out += [_NAME_LEN.pack(len(raw)), raw, _DATA_LEN.pack(len(data)), data]
    return b"".join(out)


def decode_images(body: bytes, max_files: int) -> list[tuple[str, bytes]]:
    """Parse an `application/x-headhub-images` body; WireFormatError on any inconsistency."""
    view = memoryview(body)
    if len(view) < _IMAGES_FIXED.size:
        raise WireFormatError(f"{len(view)} bytes is shorter than the header")
    magic, version, n = _IMAGES_FIXED.unpack_from(view)
    if magic != IMAGES_MAGIC:
        raise WireFormatError(f"bad magic {magic!r}")
    if version != VERSION:
        raise WireFormatError(f"unsupported wire version {version}")
    if not 0 < n <= max_files:
        raise WireFormatError(f"{n} images; send 1 to {max_files}")
    files: list[tuple[str, bytes]] = []
    at = _IMAGES_FIXED.size
    for _ in range(n):
        if at + 2 > len(view):
            raise WireFormatError("truncated before a file name")
        (name_len,) = _NAME_LEN.unpack_from(view, at)
        at += 2
        if name_len > 1024 or at + name_len + 4 > len(view):
            raise WireFormatError("truncated or oversized file name")
        name = bytes(view[at : at + name_len]).decode("utf-8", "replace")
        at += name_len
        (data_len,) = _DATA_LEN.unpack_from(view, at)
        at += 4
        if at + data_len > len(view):
            raise WireFormatError("truncated file")
        files.append((name, bytes(view[at : at + data_len])))
        at += data_len
    if at != len(view):
        raise WireFormatError(f"{len(view) - at} bytes after the last file")
    return files
