"""Bit-packed XNOR/XOR-popcount kernels for the binary layers (docs/kernels.md).

`ops` holds the operations (compiled `_bitops` extension, or a pure-PyTorch fallback when it did
not build); `network.build_fast_model` assembles them into the fast inference network, which
`extractor.inference.kernel_path` serves unless `--reference` is given, and only when the compiled
kernels loaded (`backend() == "native"`): the fallback is correct but slower than the reference.
"""

from __future__ import annotations

from extractor.kernels.ops import (
    KernelError,
    PreparedWeight,
    backend,
    binary_conv2d,
    binary_linear,
    instruction_set,
    pack_conv_weight,
    pack_linear_weight,
    pack_nchw,
    pack_rows,
    set_instruction_set,
    supported_instruction_sets,
    unpack_words,
)

__all__ = [
    "KernelError",
    "PreparedWeight",
    "backend",
    "binary_conv2d",
    "binary_linear",
    "instruction_set",
    "pack_conv_weight",
    "pack_linear_weight",
    "pack_nchw",
    "pack_rows",
    "set_instruction_set",
    "supported_instruction_sets",
    "unpack_words",
]
