"""Build the optional XOR-popcount extension (`extractor.kernels._bitops`) at install time.

Everything else is declared in pyproject.toml. The extension is optional: if the compiler, OpenMP
or pybind11 is missing, the build warns and the package installs anyway; `extractor.kernels` then
falls back to pure PyTorch (`extractor.kernels.backend()` says which one is active).
"""

from __future__ import annotations

import os
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

CSRC = "extractor/kernels/csrc"
SOURCES = [
    f"{CSRC}/module.cpp",
    f"{CSRC}/layout.cpp",
    f"{CSRC}/gemm_generic.cpp",
    f"{CSRC}/gemm_popcnt.cpp",
    f"{CSRC}/gemm_avx2.cpp",
    f"{CSRC}/gemm_avx512.cpp",
]
# No -march: the ISA-specific kernels carry their own `#pragma GCC target` and are chosen at run
# time, so one build runs on any x86-64. -ffp-contract=off keeps y * scale + bias two roundings,
# as in torch, so the fast path's real values (and sign bits) match the reference exactly.
COMPILE_ARGS = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-fvisibility=hidden"]
LINK_ARGS = ["-fopenmp"]


def _warn(msg: str) -> None:
    print(
        f"WARNING: headhub: {msg}; the pure-PyTorch kernel fallback will be used", file=sys.stderr
    )


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: a broken toolchain means the torch fallback."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing, bad flags, ...
            _warn(f"could not build the XOR-popcount extension ({exc})")

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"could not build {ext.name} ({exc})")


def _extensions() -> list:
    if os.environ.get("HEADHUB_NO_EXTENSION") or sysconfig.get_platform().startswith("win"):
        return []
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        _warn("pybind11 is not available at build time")
        return []
    return [
        Pybind11Extension(
            "extractor.kernels._bitops",
            SOURCES,
            include_dirs=[CSRC],
            depends=[f"{CSRC}/{h}" for h in ("bitgemm.h", "common.h", "gemm_scalar.inc")],
            extra_compile_args=COMPILE_ARGS,
            extra_link_args=LINK_ARGS,
            cxx_std=17,
        )
    ]


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
