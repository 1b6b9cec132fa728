"""Packed sign bits: numpy packbits little bit order, bit = x >= 0, lossless round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from extractor.packing import (
    pack_signs,
    pack_weight_signs,
    packed_width,
    unpack_signs,
    unpack_weight_signs,
)

floats = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40), elements=floats)
)
def test_unpack_of_pack_gives_signs_with_zero_positive(x: np.ndarray) -> None:
    bits = pack_signs(x)
    assert bits.dtype == np.uint8
    assert bits.shape == (*x.shape[:-1], packed_width(x.shape[-1]))
    back = unpack_signs(bits, x.shape[-1])
    assert np.array_equal(back, np.where(x >= 0, 1.0, -1.0).astype(np.float32))


def test_bit_i_is_bit_i_mod_8_of_byte_i_div_8() -> None:
    x = -np.ones(10, dtype=np.float32)
    x[0] = 0.0  # sign(0) = +1
    x[9] = 2.0
    assert pack_signs(x).tolist() == [0b0000_0001, 0b0000_0010]


def test_torch_and_numpy_inputs_pack_identically() -> None:
    t = torch.randn(3, 17)
    assert np.array_equal(pack_signs(t), pack_signs(t.numpy()))


def test_unpack_rejects_wrong_width_and_dtype() -> None:
    with pytest.raises(ValueError):
        unpack_signs(np.zeros((2, 3), np.uint8), 8)
    with pytest.raises(ValueError):
        unpack_signs(np.zeros((2, 1), np.int64), 8)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=4))
def test_weight_bits_round_trip_any_shape(shape: list[int]) -> None:
    w = torch.randn(*shape)
    bits = pack_weight_signs(w)
    assert bits.dtype == torch.uint8 and bits.numel() == packed_width(w.numel())
    assert torch.equal(unpack_weight_signs(bits, tuple(shape)), torch.where(w >= 0, 1.0, -1.0))
