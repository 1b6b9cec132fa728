"""XOR-popcount kernels and the fast network: bit-exact against the float reference path.

Every kernel variant this CPU runs (AVX-512 VPOPCNTDQ, AVX2, POPCNT, portable) and the pure-PyTorch
fallback are compared with `F.conv2d` / matmul on ±1 floats, which is what the reference computes.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extractor.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from extractor.inference import keep_freed_memory
from extractor.kernels import ops
from extractor.kernels.network import build_fast_model
from extractor.layers import BinaryUnitBN, FoldedBinaryLayer
from extractor.packing import pack_signs
from extractor.quantizers import sign
from tests.fixtures.extractor import make_tiny_checkpoint

NATIVE = ops.backend() == "native"
ALL_ISAS = ["avx512_vpopcntdq", "avx2", "popcnt", "portable"]


def _variants() -> list[object]:
    out: list[object] = ["torch-fallback"]
    for isa in ALL_ISAS:
        runnable = NATIVE and isa in ops.supported_instruction_sets()
        reason = "compiled kernels not built" if not NATIVE else f"this CPU lacks {isa}"
        out.append(pytest.param(isa, marks=pytest.mark.skipif(not runnable, reason=reason)))
    return out


@pytest.fixture(params=_variants())
def variant(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test on one kernel variant, restoring the active one afterwards."""
    name: str = request.param
    if name == "torch-fallback":
        monkeypatch.setattr(ops, "_native", None)
        yield name
        return
    before = ops.instruction_set()
    ops.set_instruction_set(name)
    try:
        yield name
    finally:
        ops.set_instruction_set(before)


def _reference_conv(x, t, w, stride, pad, scale, bias, residual):  # type: ignore[no-untyped-def]
    """The reference path's arithmetic (layers.FoldedBinaryLayer + Bi-Real residual)."""
    a = sign(x + t.view(1, -1, 1, 1)) if t is not None else sign(x)
    y = F.conv2d(a, w, None, stride, pad)
    if scale is not None:
        y = y * scale.view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y if residual is None else residual + y


conv_cases = st.fixed_dictionaries(
    {
        "n": st.integers(1, 3),
        "c": st.sampled_from([1, 3, 17, 63, 64, 65, 130]),
        "h": st.integers(1, 8),
        "w": st.integers(1, 8),
        "o": st.integers(1, 19),
        "k": st.sampled_from([1, 2, 3, 5]),
        "stride": st.sampled_from([1, 2]),
        "pad": st.integers(0, 2),
        "affine": st.booleans(),
        "residual": st.sampled_from([None, "nchw", "channels_last"]),  # the kernel reads both
        "channels_last": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=conv_cases)
def test_binary_conv_equals_float_conv_of_signs(variant: str, case: dict) -> None:
    g = torch.Generator().manual_seed(case["seed"])
    n, c, h, w, o, k = (case[key] for key in ("n", "c", "h", "w", "o", "k"))
    stride, pad = case["stride"], case["pad"]
    if (h + 2 * pad - k) < 0 or (w + 2 * pad - k) < 0:
        return  # kernel larger than the padded input: no output
    x = torch.randn(n, c, h, w, generator=g)
    x[x.abs() < 0.3] = 0.0  # exact zeros: sign(0) = +1 on both paths
    if case["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randn(c, generator=g) * 0.5
    wt = sign(torch.randn(o, c, k, k, generator=g))
    scale = torch.rand(o, generator=g) + 0.1 if case["affine"] else None
    bias = torch.randn(o, generator=g) if case["affine"] else None
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    res = torch.randn(n, o, ho, wo, generator=g) if case["residual"] else None
    if case["residual"] == "channels_last":
        res = res.contiguous(memory_format=torch.channels_last)  # type: ignore[union-attr]

    got = ops.binary_conv2d(
        ops.pack_nchw(x, t), ops.pack_conv_weight(wt), c, (k, k), stride, pad, scale, bias, res
    )
    want = _reference_conv(x, t, wt, stride, pad, scale, bias, res)
    assert got.shape == want.shape
    assert torch.equal(got, want)


@pytest.mark.skipif(not NATIVE, reason="compiled kernels not built")
@pytest.mark.parametrize("isa", ALL_ISAS)  # the transposing pack's tile follows the kernel's ISA
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 3),
    c=st.sampled_from([1, 3, 8, 16, 17, 24, 48, 64, 80, 130]),  # 16-, 8-channel tiles, scalar
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),  # 16-pixel tiles with partial ones
    channels_last=st.booleans(),
    threshold=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv_plan_with_its_input_as_residual(
    isa: str, n: int, c: int, hw: tuple[int, int], channels_last: bool, threshold: bool, seed: int
) -> None:
    """A Bi-Real block: NCHW input is packed and copied channels-last in one pass, then reused."""
    if isa not in ops.supported_instruction_sets():
        pytest.skip(f"this CPU lacks {isa}")
    before = ops.instruction_set()
    ops.set_instruction_set(isa)
    try:
        _check_plan_with_residual(n, c, hw, channels_last, threshold, seed)
    finally:
        ops.set_instruction_set(before)


def _check_plan_with_residual(
    n: int, c: int, hw: tuple[int, int], channels_last: bool, threshold: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *hw, generator=g)
    x[x.abs() < 0.3] = 0.0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randn(c, generator=g) * 0.5 if threshold else None
    wt = sign(torch.randn(c, c, 3, 3, generator=g))
    scale, bias = torch.rand(c, generator=g) + 0.1, torch.randn(c, generator=g)
    plan = ops.BinaryConvPlan(
        ops.PreparedWeight(ops.pack_conv_weight(wt)), tuple(x.shape), (3, 3), 1, 1, t, scale, bias
    )
    for _ in range(2):  # the second call reuses the plan's buffers
        got = plan(x, residual=x)
        assert torch.equal(got, _reference_conv(x, t, wt, 1, 1, scale, bias, x))
        assert torch.equal(plan.bits, ops.pack_nchw(x, t))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    m=st.integers(1, 9),
    k=st.sampled_from([1, 20, 64, 100, 512, 4096]),
    o=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_binary_linear_is_k_minus_twice_popcount(
    variant: str, m: int, k: int, o: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    x, wt = torch.randn(m, k, generator=g), sign(torch.randn(o, k, generator=g))
    scale, bias = torch.rand(o, generator=g), torch.randn(o, generator=g)
    bits, wbits = ops.pack_rows(x), ops.pack_linear_weight(wt)
    assert torch.equal(ops.binary_linear(bits, wbits, k), sign(x) @ wt.T)  # exact integers
    want = (sign(x) @ wt.T) * scale + bias
    assert torch.equal(ops.binary_linear(bits, wbits, k, scale, bias), want)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(0, 9), c=st.integers(1, 12), dim=st.integers(1, 700), seed=st.integers(0, 2**16)
)
def test_packed_dot_of_feature_bytes_is_the_sign_dot_product(
    variant: str, n: int, c: int, dim: int, seed: int
) -> None:
    """Binary heads' scoring: byte rows from pack_signs on the kernel, padding bits ignored."""
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(n, dim, generator=g), torch.randn(c, dim, generator=g)
    got = ops.packed_dot(pack_signs(x), pack_signs(w), dim)
    want = (sign(x) @ sign(w).T).to(torch.int64).numpy()
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_feature_bytes_view_as_kernel_words() -> None:
    """Binary heads: the wire's packbits bytes, zero-padded to 8, are the kernels' words."""
    x = torch.randn(5, 100)
    b = pack_signs(x)  # (5, 13) uint8
    padded = np.zeros((5, 16), dtype=np.uint8)
    padded[:, : b.shape[1]] = b
    assert torch.equal(torch.from_numpy(padded.view(np.int64)), ops.pack_rows(x))


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 70), st.integers(1, 9), st.integers(1, 9)),
    channels_last=st.booleans(),
    ceil_mode=st.booleans(),
    prelu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_avg_pool_equals_torch_bit_for_bit(
    shape: tuple[int, int, int, int], channels_last: bool, ceil_mode: bool, prelu: bool, seed: int
) -> None:
    if shape[2] < 2 or shape[3] < 2:
        return
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 10
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    a = torch.rand(shape[1], generator=g) - 0.5 if prelu else None  # fused PReLU(x) first
    want = F.avg_pool2d(x if a is None else F.prelu(x, a), 2, 2, 0, ceil_mode, False)
    got = ops.avg_pool2d(x, 2, 2, ceil_mode, prelu=a)
    assert got.is_contiguous()
    assert torch.equal(got, want)


@pytest.mark.skipif(not NATIVE, reason="compiled kernels not built")
def test_prepared_weights_for_another_isa_are_refused() -> None:
    isas = ops.supported_instruction_sets()
    if "avx2" not in isas:
        pytest.skip("needs AVX2 (its weight layout differs from the others)")
    before = ops.instruction_set()
    x, wt = torch.randn(1, 64, 3, 3), sign(torch.randn(8, 64, 3, 3))
    ops.set_instruction_set("avx2")
    try:
        w = ops.PreparedWeight(ops.pack_conv_weight(wt))
        stale = w.native()
        ops.set_instruction_set("popcnt")
        w._cache = ("popcnt", stale)  # a buffer laid out for AVX2, mislabelled
        with pytest.raises(ValueError, match="instruction set"):
            ops.binary_conv2d(ops.pack_nchw(x), w, 64, (3, 3), 1, 1)
    finally:
        ops.set_instruction_set(before)


def test_unsupported_isa_is_a_typed_error() -> None:
    if not NATIVE:
        pytest.skip("compiled kernels not built")
    missing = [i for i in ALL_ISAS if i not in ops.supported_instruction_sets()]
    with pytest.raises(ops.KernelError):
        ops.set_instruction_set(missing[0] if missing else "sse9")


def test_instruction_set_names_the_running_kernel() -> None:
    if NATIVE:
        assert ops.instruction_set() == ops.supported_instruction_sets()[0]  # best first
    else:
        assert ops.instruction_set() == "torch"


# ---- whole networks ----------------------------------------------------------------------------


def _reference_bits(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Features and the packed sign(x + b) seen by every binary layer of the reference path."""
    seen: list[torch.Tensor] = []

    def hook(m: FoldedBinaryLayer, inp: tuple[torch.Tensor], _out: torch.Tensor) -> None:
        v = (
            inp[0]
            if m.threshold is None
            else inp[0] + m.threshold.view(1, -1, *[1] * (inp[0].dim() - 2))
        )
        seen.append(v >= 0)

    layers = [m for m in model.modules() if isinstance(m, FoldedBinaryLayer) and m.binary_input]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.inference_mode():
            return model.forward_features(x), seen  # type: ignore[operator]
    finally:
        for h in handles:
            h.remove()


def _assert_equivalent(model: torch.nn.Module, x: torch.Tensor) -> None:
    fast = build_fast_model(model)
    want, ref_bits = _reference_bits(model, x)
    got, fast_words = fast.trace_bits(x)
    assert len(fast_words) == len(ref_bits) > 0
    for i, (words, bits) in enumerate(zip(fast_words, ref_bits, strict=True)):
        c = bits.shape[1]
        unpacked = ops.unpack_words(words, c) > 0  # (N, H, W, C) or (N, C)
        expect = bits.permute(0, 2, 3, 1) if bits.dim() == 4 else bits
        assert torch.equal(unpacked, expect), f"binary layer {i}: sign bits differ"
    assert torch.equal(got, want)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
    return load_checkpoint(path).model


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_tiny_checkpoint_same_bits_and_features(
    variant: str, tiny: torch.nn.Module, batch: int
) -> None:
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    _assert_equivalent(tiny, x)


def test_flat_steps_and_nested_modules_give_the_same_features(tiny: torch.nn.Module) -> None:
    fast = build_fast_model(tiny)
    assert fast.flat  # Bi-Real lists its feature_steps
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    flat = fast.forward_features(x).clone()
    fast.flat = False
    assert torch.equal(fast.forward_features(x), flat)


@pytest.mark.skipif(not NATIVE, reason="compiled kernels not built")
def test_one_fast_model_serves_changing_batch_sizes(tiny: torch.nn.Module) -> None:
    """Prepared kernel calls per batch size share buffers that grow: none may go stale."""
    fast = build_fast_model(tiny)
    g = torch.Generator().manual_seed(3)
    kept = []
    for batch in [2, 5, 1, 5, 7, 2]:
        x = torch.randn(batch, 3, 32, 32, generator=g)
        with torch.inference_mode():
            got, want = fast.forward_features(x), tiny.forward_features(x)  # type: ignore[operator]
        assert torch.equal(got, want), f"batch {batch}"
        kept.append((got, want))
    assert all(torch.equal(a, b) for a, b in kept)  # results are not views of reused buffers


def _folded(arch: str, **config: object) -> torch.nn.Module:
    """A randomly initialised network with its binary units folded (the reference form)."""
    from extractor.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, **config).eval()
    for name, unit in [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryUnitBN)]:
        unit.bn.running_mean.normal_()
        unit.bn.running_var.uniform_(0.5, 2.0)
        parent, _, leaf = name.rpartition(".")
        setattr(
            model.get_submodule(parent) if parent else model,
            leaf,
            FoldedBinaryLayer.from_unit(unit),
        )
    return model.requires_grad_(False)


@pytest.mark.parametrize("batch", [1, 3])
def test_binary_alexnet_layers_chained_on_packed_bits_match(variant: str, batch: int) -> None:
    """conv2 .. fc6 hand packed bits on (integer thresholds, OR pooling); fc7 gives floats."""
    model = _folded(
        "binary_alexnet",
        input_size=67,
        conv_widths=(8, 16, 24, 70, 16),  # 70: words with padding bits between layers
        fc_width=72,
        num_classes=10,
    )
    fast = build_fast_model(model)
    assert [m.emit is not None for m in fast.binary_layers[:6]] == [True] * 5 + [False]
    x = torch.randn(batch, 3, 67, 67, generator=torch.Generator().manual_seed(batch))
    _assert_equivalent(model, x)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 300), o=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_integer_thresholds_reproduce_the_float_sign_for_every_dot(
    k: int, o: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    scale = torch.randn(o, generator=g) * torch.rand(o, generator=g) ** 4  # some near 0
    scale[torch.rand(o, generator=g) < 0.1] = 0.0
    bias = torch.randn(o, generator=g) * k / 4
    t = torch.randn(o, generator=g)
    thr, flip = ops.integer_thresholds(scale, bias, t, k)
    d = torch.arange(-k, k + 1, dtype=torch.float32)[:, None]
    want = (d * scale + bias) + t >= 0  # the reference: affine, then the next layer's sign
    got = (d >= thr.float()) ^ flip.bool()
    assert torch.equal(got, want)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 2),
    c=st.sampled_from([1, 17, 64, 70]),
    o=st.sampled_from([1, 8, 13, 64, 70]),
    hw=st.integers(3, 9),
    seed=st.integers(0, 2**16),
)
def test_packed_output_and_or_pool_equal_pool_affine_sign(
    variant: str, n: int, c: int, o: int, hw: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, hw, hw, generator=g)
    wt = sign(torch.randn(o, c, 3, 3, generator=g))
    scale, bias, t = torch.randn(o, generator=g), torch.randn(o, generator=g), torch.randn(o)
    thr, flip = ops.integer_thresholds(scale, bias, t, 9 * c)
    dot = _reference_conv(x, None, wt, 1, 1, None, None, None)
    a, w = ops.pack_nchw(x), ops.pack_conv_weight(wt)
    for pool in (False, True):
        y = F.max_pool2d(dot, 3, 2) if pool else dot
        want = ops.pack_nchw(
            (y * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)) + t.view(1, -1, 1, 1)
        )
        got = ops.binary_conv2d(a, w, c, (3, 3), 1, 1, thresholds=thr, flip=None if pool else flip)
        if pool:
            got = ops.or_pool(got, 3, 2, ops.flip_words(flip))
        assert torch.equal(got, want)


@pytest.fixture(scope="module")
def default_model() -> torch.nn.Module:
    if not Path(DEFAULT_CHECKPOINT).exists():
        pytest.skip("no default checkpoint")
    return load_checkpoint(DEFAULT_CHECKPOINT).model


@pytest.mark.skipif(not NATIVE, reason="compiled kernels not built")
@pytest.mark.parametrize("batch", [1, 64])
def test_default_checkpoint_random_images_same_bits_and_features(
    default_model: torch.nn.Module, batch: int
) -> None:
    size = default_model.pretrained_cfg["input_size"][-1]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(7))
    _assert_equivalent(default_model, x)


@pytest.mark.skipif(not NATIVE, reason="compiled kernels not built")
def test_default_checkpoint_real_photos_same_bits_and_features(
    default_model: torch.nn.Module,
) -> None:
    data = pytest.importorskip(
        "skimage.data", reason="scikit-image (extra 'distill') has the photos"
    )
    from PIL import Image

    from extractor.imaging import preprocess

    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    x = torch.stack([preprocess(Image.fromarray(p), default_model.pretrained_cfg) for p in photos])
    _assert_equivalent(default_model, x)


def test_stem_runs_channels_last_only_where_it_reproduces_nchw(
    tiny: torch.nn.Module,
) -> None:
    fast = build_fast_model(tiny)
    stem = fast.model.stem[0]
    for b in (1, 3):
        x = torch.randn(b, 3, 32, 32)
        with torch.inference_mode():
            fast.forward_features(x)
            same = torch.equal(
                stem.conv(x.contiguous(memory_format=torch.channels_last)), stem.conv(x)
            )
        assert stem.channels_last_ok[tuple(x.shape)] is same
        assert same or not stem.channels_last_used[tuple(x.shape)]  # only where bit-identical


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_sets_the_glibc_thresholds() -> None:
    assert keep_freed_memory(trim_mb=256) is True
