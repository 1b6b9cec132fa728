"""Which code computes the features: the float reference path or the fast binary path.

The reference path runs the loaded network with plain float PyTorch ops (±1 values in float
tensors); it is the correctness oracle. The fast path, `kernel_path`, is the network of
`extractor.kernels.network` on the compiled bit-packed XNOR/popcount kernels. Both paths must give
identical sign bits; `--reference` forces the oracle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from extractor.checkpoint import LoadedExtractor

__all__ = ["InferencePath", "keep_freed_memory", "kernel_path", "reference_path", "select_path"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


def keep_freed_memory(trim_mb: int = 256) -> bool:
    """Let glibc keep freed activation buffers for the next batch instead of unmapping them.

    By default glibc serves blocks over its (adaptive) mmap threshold with fresh mmaps and returns
    the heap top to the OS, so every forward pass page-faults its multi-megabyte intermediates
    anew (what that costs: docs/kernels.md, "Memory"). Fixed thresholds keep them (up to
    `trim_mb` MB of free heap stays mapped). False where the C library is not glibc; nothing
    else changes then.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, trim_mb << 20))


@dataclass(frozen=True)
class InferencePath:
    """A feature function for one loaded extractor.

    `forward` maps a normalised batch (B, 3, H, W) to float32 features (B, D); it is called from
    one inference thread under `torch.inference_mode()`. `details` are extra `/v1/info` fields
    (e.g. `{"instruction_set": "avx2"}`).
    """

    name: str  # "reference" | "fast"
    forward: Callable[[Tensor], Tensor]
    details: dict[str, Any] = field(default_factory=dict)


def reference_path(loaded: LoadedExtractor) -> InferencePath:
    """The float PyTorch network from the checkpoint (folded ±1 weights), as loaded."""
    model = loaded.model

    def forward(x: Tensor) -> Tensor:
        return model.forward_features(x).float()  # type: ignore[operator]

    return InferencePath("reference", forward, {"torch": torch.__version__})


def kernel_path(loaded: LoadedExtractor) -> InferencePath | None:
    """The XOR-popcount network (`kernels.network`), only when the compiled kernels are loaded.

    The pure-PyTorch fallback of the kernels is correct but slower than the reference, so it is
    never selected; a kernel build that fails to import falls back to the reference, loudly.
    """
    try:
        from extractor.kernels import ops
        from extractor.kernels.network import build_fast_model
    except Exception:
        log.exception("the fast kernels failed to import; serving the reference path")
        return None
    if ops.backend() != "native":
        return None
    try:
        fast = build_fast_model(loaded)
    except ValueError:  # no binary layer with sign inputs: nothing to accelerate
        return None
    details = {"instruction_set": ops.instruction_set(), "kernels": ops.backend()}
    return InferencePath("fast", fast.forward_features, details)


def select_path(loaded: LoadedExtractor, reference: bool = False) -> InferencePath:
    """The fast path when it can serve this extractor on this CPU, else the reference."""
    fast = None if reference else kernel_path(loaded)
    return fast if fast is not None else reference_path(loaded)
