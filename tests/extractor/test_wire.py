"""The feature wire format round-trips exactly and refuses anything malformed."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extractor.packing import pack_signs
from extractor.wire import (
    MAGIC,
    FeatureBatch,
    WireFormatError,
    decode_features,
    encode_features,
)

EXTRACTOR_ID = "ab" * 32


def batch(b: int, d: int, seed: int = 0) -> FeatureBatch:
    floats = np.random.default_rng(seed).standard_normal((b, d)).astype(np.float32)
    return FeatureBatch(EXTRACTOR_ID, floats, pack_signs(floats))


@settings(max_examples=40, deadline=None)
@given(b=st.integers(0, 9), d=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_round_trip_is_bit_exact(b: int, d: int, seed: int) -> None:
    original = batch(b, d, seed)
    decoded = decode_features(encode_features(original))
    assert decoded.extractor_id == EXTRACTOR_ID
    assert decoded.floats.dtype == np.float32 and decoded.bits.dtype == np.uint8
    assert decoded.floats.tobytes() == original.floats.tobytes()
    assert np.array_equal(decoded.bits, original.bits)


def test_size_is_header_plus_raw_arrays() -> None:
    data = encode_features(batch(8, 512))
    header = 18 + len(EXTRACTOR_ID)
    padded = (header + 7) // 8 * 8
    assert len(data) == padded + 8 * 512 * 4 + 8 * 64
    assert data[:4] == MAGIC


def test_float64_input_is_written_as_float32() -> None:
    floats = np.array([[0.5, -1.25]], dtype=np.float64)
    out = decode_features(encode_features(FeatureBatch("x", floats, pack_signs(floats))))
    assert out.floats.dtype == np.float32 and out.floats.tolist() == [[0.5, -1.25]]


@pytest.mark.parametrize("cut", [0, 3, 17, 40, -1])
def test_truncated_body_is_refused(cut: int) -> None:
    data = encode_features(batch(2, 20))
    with pytest.raises(WireFormatError):
        decode_features(data[:cut])


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(WireFormatError, match="needs"):
        decode_features(encode_features(batch(2, 20)) + b"\0")


def test_wrong_magic_and_version_are_refused() -> None:
    data = bytearray(encode_features(batch(1, 8)))
    with pytest.raises(WireFormatError, match="magic"):
        decode_features(b"JSON" + bytes(data[4:]))
    struct.pack_into("<H", data, 4, 99)
    with pytest.raises(WireFormatError, match="version"):
        decode_features(bytes(data))


def test_header_lying_about_batch_size_is_refused() -> None:
    data = bytearray(encode_features(batch(2, 16)))
    struct.pack_into("<I", data, 8, 3)  # claims B=3
    with pytest.raises(WireFormatError):
        decode_features(bytes(data))


def test_feature_batch_rejects_mismatched_bits() -> None:
    floats = np.zeros((2, 20), dtype=np.float32)
    with pytest.raises(ValueError, match="bits shape"):
        FeatureBatch("x", floats, np.zeros((2, 2), dtype=np.uint8))


def test_images_round_trip_and_truncation_is_refused() -> None:
    from extractor.wire import decode_images, encode_images

    files = [("a.png", b"\x89PNG..."), ("ünï.jpg", b""), ("c", bytes(range(256)) * 3)]
    body = encode_images(files)
    assert decode_images(body, max_files=3) == files
    for bad in (body[:-1], body + b"x", b"HHIM", b"XXXX" + body[4:]):
        with pytest.raises(WireFormatError):
            decode_images(bad, max_files=3)
    with pytest.raises(WireFormatError, match="images"):
        decode_images(body, max_files=2)
