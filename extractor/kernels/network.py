"""The fast inference network: the loaded reference network, binary layers on popcount kernels.

`build_fast_model(loaded)` copies the folded reference network (`checkpoint.load_checkpoint`) and
swaps every `FoldedBinaryLayer` that takes sign inputs for a `FastBinaryLayer` (pack sign(x + b)
into 64-bit words, XOR-popcount conv/linear, folded affine in the epilogue); a Bi-Real block
`x + unit(x)` becomes one kernel call with the residual fused. Binary layers that feed each other
directly (the binary AlexNet) pass packed bits, the affine and the next sign folded into integer
thresholds (`_chain_binary_layers`). The real-valued parts (stem,
downsampling, BN, PReLU, pooling) stay the same torch modules; the kernels write channels-last
(NHWC) tensors, and real convs and the final global pool get NCHW-contiguous input as in the
reference, so their float rounding is the reference's.

Equivalence: the kernels reproduce the reference's float ops one rounding at a time, so every
binary layer sees identical sign bits and the features match (tests/extractor/test_kernels.py).
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extractor.kernels import ops
from extractor.layers import FoldedBinaryLayer, affine

__all__ = ["FastBiRealBlock", "FastBinaryLayer", "FastExtractor", "build_fast_model"]


class Workspace(threading.local):
    """Per-thread output buffers reused across calls, one per (layer, role).

    Fresh multi-megabyte tensors cost a page fault per 4 KiB page on first touch (what that costs:
    docs/kernels.md, "Memory"). Each buffer is sized for the largest batch seen and sliced for
    smaller ones; every intermediate is dead once `forward_features` returns (its result is a new
    tensor), so reuse is safe, and thread-local buffers keep concurrent callers apart. `plans` are
    the layers' prepared kernel calls per input shape, built on these buffers.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[int, str], Tensor] = {}
        self.plans: dict[tuple[int, tuple[int, ...]], ops.BinaryConvPlan] = {}

    def take(
        self, owner: nn.Module, role: str, shape: tuple[int, ...], dtype: torch.dtype
    ) -> Tensor:
        key = (id(owner), role)
        buf = self.buffers.get(key)
        if (
            buf is None
            or buf.dtype != dtype
            or buf.shape[1:] != shape[1:]
            or buf.shape[0] < shape[0]
        ):
            buf = torch.empty(shape, dtype=dtype)
            self.buffers[key] = buf
            # the owner's plans hold views of the buffer just replaced: rebuild them lazily
            self.plans = {k: p for k, p in self.plans.items() if k[0] != id(owner)}
        return buf[: shape[0]]


class FastBinaryLayer(nn.Module):
    """Kernel form of a `FoldedBinaryLayer` with binary input; same function, packed weights.

    `trace`, when set to a list, collects the packed input bits (tests compare them per layer).
    """

    scale: Tensor
    bias: Tensor
    threshold: Tensor | None

    def __init__(self, folded: FoldedBinaryLayer, workspace: Workspace | None = None) -> None:
        super().__init__()
        self.workspace = workspace or Workspace()
        if not folded.binary_input:
            raise ValueError("a layer fed real values has no popcount form")
        w = folded.weight.detach()
        self.kind = folded.kind
        self.in_channels = int(w.shape[1])
        self.kernel_size = (int(w.shape[2]), int(w.shape[3])) if self.kind == "conv" else (1, 1)
        self.stride, self.padding, self.pool = folded.stride, folded.padding, folded.pool
        packed = ops.pack_conv_weight(w) if self.kind == "conv" else ops.pack_linear_weight(w)
        self.weight = ops.PreparedWeight(packed)
        self.register_buffer("scale", folded.scale.detach().float().contiguous())
        self.register_buffer("bias", folded.bias.detach().float().contiguous())
        t = folded.threshold
        self.register_buffer("threshold", None if t is None else t.detach().float().contiguous())
        self.trace: list[Tensor] | None = None
        # Set by `chain_to` when the output feeds another binary layer directly: packed bits out
        self.emit: tuple[Tensor, Tensor, Tensor] | None = None  # thresholds, flip, flip words
        self.in_grid: tuple[int, int] | None = None  # linear fed a packed (h, w) conv map

    def chain_to(self, nxt: FastBinaryLayer) -> None:
        """Output packed sign bits for `nxt` (BN, affine and its sign as integer thresholds).

        A linear `nxt` fed this conv's map (AlexNet's fc6) gets its weight columns reordered from
        the reference's (c, h, w) flattening to the map's pixel-by-pixel words.
        """
        k = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        thr, flip = ops.integer_thresholds(self.scale, self.bias, nxt.threshold, k)
        self.emit = (thr, flip, ops.flip_words(flip))
        if self.kind == "conv" and nxt.kind == "linear":
            c = self.weight.out_features
            hw = nxt.in_channels // c
            side = round(hw**0.5)
            if side * side * c != nxt.in_channels:
                raise ValueError("a linear layer after a conv needs a square (C, h, w) input")
            w = ops.unpack_words(nxt.weight.words, nxt.in_channels).reshape(-1, c, side, side)
            nxt.weight = ops.PreparedWeight(ops.pack_conv_weight(w))
            nxt.in_grid = (side, side)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if x.dtype == torch.int64 or self.emit is not None:
            return self._packed_forward(x)
        conv = self.kind == "conv"
        if conv and self.pool is None and x.dtype == torch.float32 and ops.backend() == "native":
            plan = self._plan(tuple(x.shape))
            y = plan(x, residual)
            if self.trace is not None:
                self.trace.append(plan.bits)
            return y
        if conv:
            n, c, h, w = x.shape
            words = self.workspace.take(self, "bits", (n, h, w, ops.words_for(c)), torch.int64)
            bits = ops.pack_nchw(x, self.threshold, out=words)
        else:
            bits = ops.pack_rows(x, self.threshold)
        if self.trace is not None:
            self.trace.append(bits)
        fused = self.pool is None  # a pool sits between the conv and the affine (AlexNet)
        scale, bias = (self.scale, self.bias) if fused else (None, None)
        if conv:
            kh, kw = self.kernel_size
            ho = (h + 2 * self.padding - kh) // self.stride + 1
            wo = (w + 2 * self.padding - kw) // self.stride + 1
            o = self.weight.out_features
            buf = self.workspace.take(self, "out", (n, ho, wo, o), torch.float32)
            y = ops.binary_conv2d(
                bits,
                self.weight,
                self.in_channels,
                self.kernel_size,
                self.stride,
                self.padding,
                scale,
                bias,
                residual if fused else None,
                out=buf,
            )
        else:
            y = ops.binary_linear(
                bits, self.weight, self.in_channels, scale, bias, residual if fused else None
            )
        if not fused:
            y = affine(self.pool(y), self.scale, self.bias)  # type: ignore[misc]
            if residual is not None:
                y = residual + y
        return y

    def _packed_forward(self, x: Tensor) -> Tensor:
        """Packed words in (a chained layer's output) and/or out (`emit`), no float activations.

        Words are (N, H, W, Cw) for a conv and (N, Kw) for a linear layer, or any (N, ...) words
        flattened to Kw (a conv map before a linear layer).
        """
        if x.dtype == torch.int64:
            bits = x if self.kind == "conv" else x.reshape(x.shape[0], -1)
        elif self.kind == "conv":
            bits = ops.pack_nchw(x, self.threshold)
        else:
            bits = ops.pack_rows(x, self.threshold)
        if self.trace is not None:
            self.trace.append(self._reference_order(bits))
        thr, flip, flip_words = self.emit if self.emit is not None else (None, None, None)
        pooled = self.pool is not None
        fused = thr is None and not pooled  # the affine in the kernel's float epilogue
        scale, bias = (self.scale, self.bias) if fused else (None, None)
        if self.kind == "conv":
            y = ops.binary_conv2d(
                bits, self.weight, self.in_channels, self.kernel_size, self.stride, self.padding,
                scale, bias, thresholds=thr, flip=None if pooled else flip,
            )  # fmt: skip
        else:
            y = ops.binary_linear(
                bits, self.weight, self.in_channels, scale, bias, thresholds=thr, flip=flip
            )
        if thr is not None:
            return ops.or_pool(y, *_max_pool_geometry(self.pool), flip_words) if pooled else y
        # the last layer of a chain: float output, as the reference's
        return affine(self.pool(y), self.scale, self.bias) if pooled else y  # type: ignore[misc]

    def _reference_order(self, bits: Tensor) -> Tensor:
        """Traced bits as the reference flattens them (linear after a conv map: (c, h, w))."""
        if self.in_grid is None:
            return bits
        h, w = self.in_grid
        c = self.in_channels // (h * w)
        signs = ops.unpack_words(bits.reshape(-1, h, w, ops.words_for(c)), c)
        return ops.pack_rows(signs.permute(0, 3, 1, 2).reshape(bits.shape[0], -1).contiguous())

    def _plan(self, shape: tuple[int, ...]) -> ops.BinaryConvPlan:
        """This thread's prepared pack + conv for inputs of `shape` (one per batch size seen)."""
        key = (id(self), shape)
        plan = self.workspace.plans.get(key)
        if plan is None:
            plan = ops.BinaryConvPlan(
                self.weight,
                shape,  # type: ignore[arg-type]
                self.kernel_size,
                self.stride,
                self.padding,
                self.threshold,
                self.scale,
                self.bias,
                alloc=lambda role, shape, dtype: self.workspace.take(self, role, shape, dtype),
            )
            self.workspace.plans[key] = plan
        return plan


def _max_pool_geometry(pool: nn.Module | None) -> tuple[int, int]:
    """(kernel, stride) of a square, unpadded, floor-mode max pool; ValueError otherwise."""
    if not isinstance(pool, nn.MaxPool2d) or pool.padding not in (0, (0, 0)) or pool.ceil_mode:
        raise ValueError(f"no packed form for {pool}")
    k, s = _single(pool.kernel_size), _single(pool.stride or pool.kernel_size)
    if k < 1 or s < 1 or _single(pool.dilation) != 1:
        raise ValueError(f"no packed form for {pool}")
    return k, s


def _chain_binary_layers(model: nn.Module) -> int:
    """Binary layers that feed each other directly keep their activations packed.

    Only the binary AlexNet has such runs (conv2 .. conv5, fc6, fc7: each reads the previous
    one's BN output through a sign); Bi-Real puts a real residual add between any two. Returns
    how many layers now output packed bits.
    """
    if getattr(model, "arch", None) != "binary_alexnet":
        return 0
    layers = [*list(model.features)[1:], model.fc6, model.fc7]  # type: ignore[union-attr,arg-type]
    if not all(isinstance(m, FastBinaryLayer) for m in layers):
        return 0
    for layer, nxt in itertools.pairwise(layers):
        if layer.pool is not None:
            _max_pool_geometry(layer.pool)  # a pool with no packed form would raise here
        layer.chain_to(nxt)
    return len(layers) - 1


class FastBiRealBlock(nn.Module):
    """x + unit(x) as one kernel call: the residual add runs in the conv epilogue.

    x may be in any memory format: packing and the epilogue read it with strides, so the NCHW
    output of a real downsample conv is never copied; the result is channels-last.
    """

    def __init__(self, unit: FastBinaryLayer) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, x: Tensor) -> Tensor:
        return self.unit(x, residual=x)


def _is_birealblock(m: nn.Module) -> bool:
    from extractor.models.birealnet import BiRealBlock

    return isinstance(m, BiRealBlock) and isinstance(getattr(m, "unit", None), FoldedBinaryLayer)


def _swap(module: nn.Module, ws: Workspace) -> int:
    """Replace binary layers below `module` in place; returns how many were replaced."""
    n = 0
    for name, child in module.named_children():
        if _is_birealblock(child) and child.unit.binary_input:  # type: ignore[union-attr]
            setattr(module, name, FastBiRealBlock(FastBinaryLayer(child.unit, ws)))  # type: ignore[arg-type]
            n += 1
        elif isinstance(child, FoldedBinaryLayer):
            if child.binary_input:
                setattr(module, name, FastBinaryLayer(child, ws))
                n += 1
        elif isinstance(child, nn.Conv2d):
            setattr(module, name, _ReferenceLayoutConv(child))
        elif isinstance(child, nn.AvgPool2d) and _FastAvgPool.supports(child):
            setattr(module, name, _FastAvgPool(child, ws))
        else:
            n += _swap(child, ws)
    return n


class _Contiguous(nn.Module):
    """Back to NCHW memory: the reference's reductions (global pool) then sum in the same order."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.to_contiguous(x)


class _ReferenceLayoutConv(nn.Module):
    """A real conv computed exactly as the reference computes it (NCHW-contiguous input).

    These real values feed the next layer's sign, so their float rounding must be the reference's.
    oneDNN picks its algorithm per shape and layout: channels-last input can be several times
    faster for the 3-channel image stem (or slower: it depends on the CPU and the batch size), but
    gives different roundings for some shapes (e.g. a 1x1 256->512 conv at batch >= 2, the tiny
    test stem at batch 1). So the image stem (<= 4 input channels) probes each new input shape
    once on random data: channels-last is used for that shape only if it reproduces the NCHW
    result bit for bit (different algorithms disagree on practically any input of this size) and
    is the faster of the two there, the copy of the NCHW input included; every other conv always
    gets NCHW input.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.probe = conv.in_channels <= 4
        self.channels_last_ok: dict[tuple[int, ...], bool] = {}  # bit-identical to NCHW
        self.channels_last_used: dict[tuple[int, ...], bool] = {}  # ... and faster

    def _use_channels_last(self, shape: tuple[int, ...]) -> bool:
        use = self.channels_last_used.get(shape)
        if use is None:
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
            xcl = x.contiguous(memory_format=torch.channels_last)
            ok = self.channels_last_ok[shape] = torch.equal(self.conv(xcl), self.conv(x))
            use = self.channels_last_used[shape] = ok and _best_time(
                lambda: self.conv(x.contiguous(memory_format=torch.channels_last))
            ) < _best_time(lambda: self.conv(x))
        return use

    def forward(self, x: Tensor) -> Tensor:
        if self.probe and self._use_channels_last(tuple(x.shape)):
            return self.conv(x.contiguous(memory_format=torch.channels_last))
        return self.conv(ops.to_contiguous(x))


def _best_time(f: Callable[[], object], reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


class _FastAvgPool(nn.Module):
    """Unpadded average pool read in any layout, written NCHW-contiguous for the real conv next.

    Same sums in the same order and one division as ATen (`ops.avg_pool2d`), so identical values;
    ATen's NCHW kernel is much slower here (docs/kernels.md, "Data layout") and its channels-last
    one would need two copies.
    `prelu`, when set, holds the weights of a PReLU that ran just before and now runs inside the
    pool (`_fuse_stem_prelu`).
    """

    prelu: Tensor | None

    def __init__(self, pool: nn.AvgPool2d, workspace: Workspace) -> None:
        super().__init__()
        self.pool = pool
        self.kernel = _single(pool.kernel_size)
        self.stride = _single(pool.stride or pool.kernel_size)
        self.workspace = workspace
        self.register_buffer("prelu", None)

    @staticmethod
    def supports(pool: nn.AvgPool2d) -> bool:
        k, s = _single(pool.kernel_size), _single(pool.stride or pool.kernel_size)
        return k > 0 and s > 0 and _single(pool.padding) == 0 and pool.divisor_override is None

    def forward(self, x: Tensor) -> Tensor:
        if ops.backend() != "native":
            return self.pool(x if self.prelu is None else F.prelu(x, self.prelu))
        n, c, h, w = x.shape
        ceil = bool(self.pool.ceil_mode)
        shape = (n, c, *(ops.pooled_size(v, self.kernel, self.stride, ceil) for v in (h, w)))
        buf = self.workspace.take(self, "out", shape, torch.float32)
        return ops.avg_pool2d(x, self.kernel, self.stride, ceil, out=buf, prelu=self.prelu)


def _fuse_stem_prelu(model: nn.Module) -> None:
    """Bi-Real's stem ends in a per-channel PReLU whose output only the first stage's average
    pool reads: the pool applies it while summing, which saves writing and re-reading the
    network's largest activation (B x 32 x 56 x 56 floats)."""
    stem, stages = getattr(model, "stem", None), getattr(model, "stages", None)
    if not isinstance(stem, nn.Sequential) or not isinstance(stages, nn.Sequential):
        return
    act, first = stem[-1], stages[0]
    while isinstance(first, nn.Sequential):  # stage 0 -> its downsample -> the pool
        first = first[0]
    if isinstance(act, nn.PReLU) and act.num_parameters > 1 and isinstance(first, _FastAvgPool):
        first.prelu = act.weight.detach().float().contiguous()
        stem[-1] = nn.Identity()


def _single(v: int | tuple[int, ...]) -> int:
    """A square pool's size; -1 for a non-square one (unsupported)."""
    if isinstance(v, int):
        return v
    return v[0] if all(e == v[0] for e in v) else -1


class FastExtractor(nn.Module):
    """`forward_features` of the loaded network with binary layers on the kernels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.feature_dim = int(model.feature_dim)  # type: ignore[arg-type]
        self.arch = str(getattr(model, "arch", ""))
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})
        self.binary_layers = [m for m in model.modules() if isinstance(m, FastBinaryLayer)]
        # A network that lists its forward as steps (`feature_steps`) runs them as one flat list
        # of `forward` methods: nested module calls are a visible share of a batch-1 forward
        # (docs/kernels.md, "Data layout").
        # Module hooks then only fire on the steps' own submodules; `flat = False` restores the
        # nested calls (the benchmark's per-layer timing hooks every part).
        steps = getattr(model, "feature_steps", None)
        self._steps = [f for step in steps() for f in _flatten(step)] if steps else None
        self.flat = self._steps is not None

    @torch.inference_mode()
    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalized images -> (B, D) float32 features."""
        x = x.float().contiguous()  # NCHW, like the reference: the real stem conv reads it
        if self.flat and self._steps is not None:
            for step in self._steps:
                x = step(x)
            return x.float().contiguous()
        return self.model.forward_features(x).float().contiguous()  # type: ignore[operator]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def trace_bits(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Features plus the packed input bits of every binary layer, in execution order."""
        traces: list[Tensor] = []
        for layer in self.binary_layers:
            layer.trace = traces
        try:
            return self.forward_features(x), traces
        finally:
            for layer in self.binary_layers:
                layer.trace = None

    def instruction_set(self) -> str:
        return ops.instruction_set()


def _flatten(step: Callable[[Tensor], Tensor]) -> list[Callable[[Tensor], Tensor]]:
    """A Sequential as its children's `forward` methods in order (Identity dropped)."""
    if isinstance(step, nn.Sequential):
        return [f for child in step for f in _flatten(child)]
    if isinstance(step, nn.Identity):
        return []
    return [step.forward if isinstance(step, nn.Module) else step]


def build_fast_model(loaded: object, *, packed_chains: bool = True) -> FastExtractor:
    """Fast network from a `LoadedExtractor` (or its folded `.model`); the input is not modified.

    Works with either kernel backend; with the PyTorch fallback (`ops.backend() == "torch"`) it is
    correct but slower than the reference, which is why the server only selects it when native.
    `packed_chains=False` keeps float activations between consecutive binary layers (each packs
    its own input), for the benchmark's comparison.
    """
    model = getattr(loaded, "model", loaded)
    if not isinstance(model, nn.Module):
        raise TypeError("build_fast_model needs a LoadedExtractor or an nn.Module")
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    if _swap(fast, Workspace()) == 0:
        raise ValueError("no binary layer with sign inputs found: nothing to accelerate")
    _fuse_stem_prelu(fast)
    if packed_chains:
        _chain_binary_layers(fast)
    final = getattr(fast, "final", None)
    if isinstance(final, nn.Module):  # Bi-Real: (B, C, S/32, S/32) is tiny, the copy is free
        fast.final = nn.Sequential(_Contiguous(), final)
    return FastExtractor(fast)
