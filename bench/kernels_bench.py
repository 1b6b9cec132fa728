"""XOR-popcount kernels against the float reference and the float teacher, in one run.

    .venv/bin/python -m bench.kernels_bench [--checkpoint PATH] [--batches 1 32] [--reps 30]

On the same normalized inputs it times `forward_features` of
- `fast`: `extractor.kernels.network.build_fast_model` (bit-packed binary layers on the compiled
  kernels);
- `reference`: the folded float reference path (`--reference`: ±1 values in float tensors);
- `teacher`: EfficientNet-Lite0 (`extractor.teacher`, batch norms folded), pretrained weights when
  installed, else the same architecture randomly initialised (identical cost), on the same
  112x112 inputs.
The three are timed round-robin (three calls each per round), so background load hits them
alike; p50/p90 are per-batch wall latencies of warm calls (as in a server) and of cold ones.
It then breaks each path down per layer (wall time of each module, and for the fast path the
kernel calls and their phases), gives each binary conv's achieved binary multiply-adds per ns
against the measured single-core kernel ceiling, and writes Markdown to
`bench/results/kernels.md`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.extractor_bench import cpu_name, load_bench_teacher
from extractor.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from extractor.inference import keep_freed_memory
from extractor.kernels import ops
from extractor.kernels.network import FastBinaryLayer, FastExtractor, build_fast_model

RESULTS = Path(__file__).resolve().parent / "results" / "kernels.md"
Forward = Callable[[Tensor], Tensor]
# Per-layer clock: with one thread all work is on the calling thread, and its CPU time is immune
# to other processes' load; with more threads only wall time covers the workers.
_clock = time.perf_counter


def round_robin(
    paths: dict[str, Forward], x: Tensor, reps: int, block: int = 3
) -> dict[str, dict[str, list[float]]]:
    """Per path: wall seconds of "cold" and "warm" calls and process CPU seconds of warm calls.

    Each round runs every path `block` times in a row, so background load hits all paths alike.
    The first call of a block runs right after the other networks evicted its caches ("cold");
    the others run as a server runs one network back to back ("warm").
    """
    out = {name: {"cold": [], "warm": [], "cpu": []} for name in paths}
    with torch.inference_mode():
        for f in paths.values():
            for _ in range(3):  # warm-up: oneDNN primitive cache, prepared weights, and glibc's
                f(x)  # mmap threshold, which adapts only after large blocks have been freed
        for _ in range(reps):
            for name, f in paths.items():
                for i in range(block):
                    c0, t0 = time.process_time(), time.perf_counter()
                    f(x)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    out[name]["cold" if i == 0 else "warm"].append(wall)
                    if i:
                        out[name]["cpu"].append(cpu)
    return out


def _pct(v: list[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


@contextmanager
def module_timer(modules: dict[str, nn.Module], acc: dict[str, float]) -> Iterator[None]:
    """Accumulate wall time per named module via forward hooks."""
    starts: dict[str, float] = {}
    handles = []
    for name, m in modules.items():

        def pre(_m: nn.Module, _i: Any, name: str = name) -> None:
            starts[name] = _clock()

        def post(_m: nn.Module, _i: Any, _o: Any, name: str = name) -> None:
            acc[name] += _clock() - starts[name]

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def op_timer(acc: dict[str, float], macs: dict[str, float]) -> Iterator[None]:
    """Time the kernel calls made by the fast network (`extractor.kernels.network`): each layer's
    prepared pack + binary conv (`ops.BinaryConvPlan`), the unprepared kernel wrappers (linear
    layers, the torch fallback), layout copies; and the kernels' own split by phase
    (`_bitops.profile`)."""
    names = ["pack_nchw", "pack_rows", "binary_conv2d", "binary_linear", "to_contiguous"]
    saved = {n: getattr(ops, n) for n in names}
    plan_call = ops.BinaryConvPlan.__call__

    def wrap(n: str, f: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def timed(*a: Any, **k: Any) -> Tensor:
            t0 = _clock()
            out = f(*a, **k)
            acc[f"op:{n}"] += _clock() - t0
            return out

        return timed

    def timed_plan(plan: ops.BinaryConvPlan, *a: Any, **k: Any) -> Tensor:
        t0 = _clock()
        out = plan_call(plan, *a, **k)
        dt = _clock() - t0
        acc["op:binary conv (pack + kernel)"] += dt
        key = f"conv {plan.geometry[0]}->{out.shape[1]} @{out.shape[2]}x{out.shape[3]}"
        macs[key] += plan.macs
        acc[f"mac:{key}"] += dt
        return out

    for n, f in saved.items():
        setattr(ops, n, wrap(n, f))
    ops.BinaryConvPlan.__call__ = timed_plan  # type: ignore[method-assign]
    native = ops._native
    if native is not None:
        native.profile(True)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(ops, n, f)
        ops.BinaryConvPlan.__call__ = plan_call  # type: ignore[method-assign]
        if native is not None:
            for phase, ms in native.profile(False).items():
                acc[f"phase:{phase}"] += ms / 1e3


def _named_parts(model: nn.Module) -> dict[str, nn.Module]:
    """Top-level pieces worth timing: stem, each stage's children, final."""
    parts: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if name == "stages":
            for si, stage in enumerate(child):
                for bi, block in enumerate(stage):
                    kind = "downsample" if bi == 0 else f"block {bi}"
                    parts[f"stage {si} {kind}"] = block
        elif name != "head":
            parts[name] = child
    return parts


def breakdown(
    model: nn.Module, forward: Forward, x: Tensor, reps: int, fast: bool
) -> tuple[dict[str, float], dict[str, float], float]:
    """Mean ms per batch per part (and per op for the fast path), MACs per conv, total ms."""
    acc: dict[str, float] = defaultdict(float)
    macs: dict[str, float] = defaultdict(float)
    parts = _named_parts(model)
    with torch.inference_mode():
        for _ in range(3):
            forward(x)
        t0 = _clock()
        with module_timer(parts, acc):
            if fast:
                with op_timer(acc, macs):
                    for _ in range(reps):
                        forward(x)
            else:
                for _ in range(reps):
                    forward(x)
        total = (_clock() - t0) / reps * 1e3
    ms = {k: v / reps * 1e3 for k, v in acc.items()}
    return ms, {k: v / reps for k, v in macs.items()}, total


def ceilings() -> dict[str, dict[int, float]]:
    """Single-thread kernel throughput (binary MACs per ns) per instruction set and Kw."""
    native = ops._native
    if native is None:
        return {}
    active = native.isa()
    out: dict[str, dict[int, float]] = {}
    try:
        for isa in ops.supported_instruction_sets():
            native.set_isa(isa)
            out[isa] = {kw: native.peak_macs_per_ns(kw, 48, 64, 400) for kw in (9, 18, 36, 72)}
    finally:
        native.set_isa(active)
    return out


def float_ceiling(n: int = 512, reps: int = 20) -> float:
    """fp32 multiply-adds per ns of a cache-friendly square GEMM on one thread (thread CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        t0 = time.thread_time()
        for _ in range(reps):
            torch.mm(a, b)
        return reps * n**3 / ((time.thread_time() - t0) * 1e9)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> str:
    global _clock
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    _clock = time.thread_time if args.threads == 1 else time.perf_counter
    malloc_kept = keep_freed_memory()  # as the extractor server does; helps every path alike
    loaded = load_checkpoint(args.checkpoint)
    fast = build_fast_model(loaded)
    ref_model = loaded.model
    teacher, teacher_note = load_bench_teacher()
    size = loaded.pretrained_cfg["input_size"][-1]
    load0 = os.getloadavg()
    lines = [
        "# Binary kernels: fast path vs float reference vs float teacher",
        "",
        f"- command: `.venv/bin/python -m bench.kernels_bench {' '.join(args.argv)}`".rstrip(),
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {args.threads}, "
        f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})",
        f"- kernels: backend `{ops.backend()}`, instruction set `{ops.instruction_set()}`, "
        f"supported {ops.supported_instruction_sets()}",
        f"- checkpoint: `{loaded.arch}` {loaded.id[:12]}, input {size}x{size}",
        f"- teacher: {teacher_note}",
        f"- allocator: freed memory kept for reuse (`extractor.inference.keep_freed_memory`, as "
        f"the server does): {'yes' if malloc_kept else 'no (not glibc)'}",
        f"- load average at start (1/5/15 min): {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} "
        "(the machine is shared; paths are timed round-robin so load hits them alike)",
        "",
    ]
    ceil = ceilings()
    if ceil:
        lines += [
            "## Kernel ceiling (one thread, operands in cache, binary multiply-adds per ns)",
            "",
            "| instruction set | Kw=9 (C=64) | Kw=18 | Kw=36 | Kw=72 (C=512) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {isa} | " + " | ".join(f"{v:.0f}" for v in d.values()) + " |"
            for isa, d in ceil.items()
        ]
        lines.append("")
    active = ceil.get(ops.instruction_set(), {})
    peak = max(active.values()) if active else float("nan")
    if ceil:
        fp32 = float_ceiling()
        lines += [
            f"Float32 for comparison: `torch.mm` 512x512x512 on one thread reaches {fp32:.0f} "
            f"multiply-adds per ns, so the binary/float ceiling ratio here is "
            f"**{peak / fp32:.1f}x** (`{ops.instruction_set()}` at its best row length).",
            "",
        ]

    paths: dict[str, Forward] = {
        "fast": fast.forward_features,
        "reference": lambda t: ref_model.forward_features(t),  # type: ignore[operator]
    }
    if teacher is not None:
        paths["teacher"] = lambda t: teacher.forward_features(t)  # type: ignore[operator,union-attr]
    lines += [
        "## Throughput (wall clock, same inputs)",
        "",
        "Warm: a path's 2nd and 3rd call in a row, as a server runs one network back to back. "
        "Cold: its first call right after the other two networks ran (caches evicted).",
        "",
        "| batch | path | images/s (warm p50) | warm p50 ms | warm p90 ms | warm p50 CPU ms "
        "| cold p50 ms | vs reference (warm p50) | vs reference (cold p50) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[int, dict[str, tuple[float, float]]] = {}
    for bs in args.batches:
        x = torch.randn(bs, 3, size, size)
        reps = max(5, args.reps if bs == 1 else args.reps // 3)
        t = round_robin(paths, x, reps)
        warm = {n: _pct(v["warm"], 0.5) for n, v in t.items()}
        cold = {n: _pct(v["cold"], 0.5) for n, v in t.items()}
        summary[bs] = {n: (warm[n], cold[n]) for n in t}
        for name, v in t.items():
            lines.append(
                f"| {bs} | {name} | {bs / warm[name]:.1f} | {warm[name] * 1e3:.2f} | "
                f"{_pct(v['warm'], 0.9) * 1e3:.2f} | {_pct(v['cpu'], 0.5) * 1e3:.2f} | "
                f"{cold[name] * 1e3:.2f} | {warm['reference'] / warm[name]:.2f}x | "
                f"{cold['reference'] / cold[name]:.2f}x |"
            )
    lines.append("")
    for bs in args.batches:
        x = torch.randn(bs, 3, size, size)
        reps = max(3, args.reps // (1 if bs == 1 else 3))
        lines += breakdown_table(fast, ref_model, x, reps, peak, args.threads)
    if args.alexnet:
        lines += packed_alexnet_section(args.threads, args.reps)
    load1 = os.getloadavg()
    lines += [
        f"Load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}.",
        "",
        "Speedup (p50 reference / p50 fast, warm; cold in brackets): "
        + ", ".join(
            f"batch {b}: {s['reference'][0] / s['fast'][0]:.2f}x "
            f"({s['reference'][1] / s['fast'][1]:.2f}x)"
            for b, s in summary.items()
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def packed_alexnet_section(threads: int, reps: int) -> list[str]:
    """The paper's binary AlexNet (random weights, BN calibrated on procedural images): the fast
    path with activations packed between binary layers, without (float activations, each layer
    packs its input), and the float reference, at batch 1 and 32, and per layer at batch 32."""
    import tempfile

    from extractor.calibration import calibrate_bn, procedural_images
    from extractor.checkpoint import save_checkpoint
    from extractor.imaging import normalize
    from extractor.layers import set_binarize
    from extractor.models import create_model

    torch.manual_seed(0)
    model: Any = create_model("binary_alexnet")
    set_binarize(model, True, True)
    size = model.pretrained_cfg["input_size"][-1]
    calibrate_bn(model, normalize(procedural_images(32, size), model.pretrained_cfg))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "alexnet.safetensors"
        save_checkpoint(model, path, {"random-init": "bench: speed does not depend on weights"})
        loaded = load_checkpoint(path)
    ref = loaded.model
    fast = build_fast_model(loaded)
    loose = build_fast_model(loaded, packed_chains=False)
    paths: dict[str, Forward] = {
        "fast, packed between layers": fast.forward_features,
        "fast, float between layers": loose.forward_features,
        "reference": lambda t: ref.forward_features(t),  # type: ignore[operator]
    }
    chained = sum(m.emit is not None for m in fast.binary_layers)
    lines = [
        "## The paper's network: binary AlexNet with packed activations between layers",
        "",
        f"`binary_alexnet` at {size}x{size}, random weights with BN calibrated on procedural "
        f"images (speed does not depend on the weights), {loaded.size_bytes:,} bytes packed. "
        f"{chained} binary layers hand the next one packed sign bits: BN, scale and the next "
        "sign folded into exact per-channel integer thresholds, max pooling as OR on the packed "
        "bits (`ops.integer_thresholds`, `ops.or_pool`). conv1 sees the real image: a float "
        "conv with ±1 weights, as in the reference.",
        "",
        "| batch | path | images/s (warm p50) | warm p50 ms | vs reference |",
        "|---|---|---|---|---|",
    ]
    for bs in (1, 32):
        x = torch.randn(bs, 3, size, size)
        t = round_robin(paths, x, max(3, reps if bs == 1 else reps // 6))
        warm = {n: _pct(v["warm"], 0.5) for n, v in t.items()}
        for name in paths:
            lines.append(
                f"| {bs} | {name} | {bs / warm[name]:.1f} | {warm[name] * 1e3:.2f} | "
                f"{warm['reference'] / warm[name]:.2f}x |"
            )
    names = ["conv1 (real input)", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    x = torch.randn(32, 3, size, size)
    per: dict[str, dict[str, float]] = {}
    for label, m in (("reference", ref), ("float between", loose.model), ("packed", fast.model)):
        parts = dict(zip(names, [*m.features, m.fc6, m.fc7], strict=True))  # type: ignore[union-attr]
        acc: dict[str, float] = defaultdict(float)
        n = 2
        with torch.inference_mode(), module_timer(parts, acc):
            for _ in range(n + 1):
                m.forward_features(x)  # type: ignore[operator]
        per[label] = {k: v / (n + 1) * 1e3 for k, v in acc.items()}
    lines += [
        "",
        f"Per layer, batch 32 (wall ms, mean of 3 calls, hooks included, {threads} threads):",
        "",
        "| layer | reference | fast, float between | fast, packed between |",
        "|---|---|---|---|",
    ]
    for k in names:
        r, f, p = (per[label][k] for label in ("reference", "float between", "packed"))
        lines.append(f"| {k} | {r:.2f} | {f:.2f} | {p:.2f} |")
    binary = names[1:]
    rb, pb = (sum(per[lb][k] for k in binary) for lb in ("reference", "packed"))
    c1 = per["reference"][names[0]]
    lines += [
        "",
        f"Binary layers: {rb:.1f} ms in the reference, {pb:.1f} ms packed (**{rb / pb:.1f}x**). "
        f"conv1, a real-input float conv in both, takes {c1:.1f} ms: {100 * c1 / (c1 + rb):.0f}% "
        f"of the reference and the bound on the whole network's speedup "
        f"({(c1 + rb) / c1:.1f}x with free binary layers).",
        "",
    ]
    return lines


def breakdown_table(
    fast: FastExtractor, ref: nn.Module, x: Tensor, reps: int, peak: float, threads: int
) -> list[str]:
    bs = x.shape[0]
    flat, fast.flat = fast.flat, False  # nested module calls, so that every part's hooks fire
    try:
        f_ms, macs, f_total = breakdown(fast.model, fast.forward_features, x, reps, fast=True)
    finally:
        fast.flat = flat
    r_ms, _, r_total = breakdown(ref, lambda t: ref.forward_features(t), x, reps, fast=False)  # type: ignore[operator]
    clock = "thread CPU" if threads == 1 else "wall"
    lines = [
        f"## Per-layer {clock} time, batch {bs} (mean of {reps} calls, hooks included)",
        "",
        "The fast path runs here as nested module calls (`FastExtractor.flat = False`) so that "
        "the timing hooks fire on every part; the throughput table above times its flat form.",
        "",
        "| part | reference ms | fast ms |",
        "|---|---|---|",
    ]
    for name in _named_parts(ref):
        lines.append(f"| {name} | {r_ms.get(name, 0):.3f} | {f_ms.get(name, 0):.3f} |")
    lines.append(f"| whole forward_features | {r_total:.3f} | {f_total:.3f} |")
    # Amdahl: the real-valued parts must run through the reference's own torch ops to keep every
    # sign bit identical, so their reference time bounds the speedup even with free binary layers.
    real = [n for n in _named_parts(ref) if "block" not in n]
    floor_ms = sum(macs.values()) / (peak * threads) / 1e6
    r_real, f_real = sum(r_ms.get(n, 0) for n in real), sum(f_ms.get(n, 0) for n in real)
    lines += [
        "",
        f"Real-valued parts ({', '.join(real)}): {r_real:.3f} ms of the reference's "
        f"{r_total:.3f} ms ({100 * r_real / r_total:.0f}%), {f_real:.3f} ms in the fast path. "
        f"With binary layers at zero cost the speedup would be at most "
        f"**{r_total / max(f_real, 1e-9):.1f}x** at this batch size; with the binary convs' "
        f"{sum(macs.values()) / 1e6:.0f} M binary MACs at the kernel ceiling "
        f"({peak:.0f}/ns x {threads} threads = {floor_ms:.3f} ms), at most "
        f"**{r_total / max(f_real + floor_ms, 1e-9):.1f}x**.",
    ]
    lines += ["", "Fast path by operation (summed over layers):", ""]
    lines += ["| operation | ms | share of fast total |", "|---|---|---|"]
    for k, v in sorted(f_ms.items()):
        if k.startswith("op:"):
            lines.append(f"| {k[3:]} | {v:.3f} | {100 * v / f_total:.0f}% |")
    phases = {k[6:]: v for k, v in f_ms.items() if k.startswith("phase:")}
    if phases:
        lines += [
            "",
            "Inside the kernels (CPU ms summed over threads): "
            + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in phases.items())
            + ".",
        ]
    lines += [
        "",
        "Binary convs, achieved binary multiply-adds per ns (packing, im2col, epilogue included) "
        f"against the one-thread ceiling {peak:.0f}/ns x {threads} threads:",
        "",
        "| conv | MMACs | ms | MACs/ns | of ceiling |",
        "|---|---|---|---|---|",
    ]
    for key, n in macs.items():
        t = f_ms[f"mac:{key}"]
        rate = n / (t * 1e6)
        lines.append(
            f"| {key} | {n / 1e6:.1f} | {t:.3f} | {rate:.0f} | "
            f"{100 * rate / (peak * threads):.0f}% |"
        )
    lines.append("")
    n_layers = sum(isinstance(m, FastBinaryLayer) for m in fast.modules())
    lines.append(f"({n_layers} binary layers on the kernels.)")
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(prog="python -m bench.kernels_bench", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--reps", type=int, default=30, help="rounds at batch 1 (a third above)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--no-alexnet", dest="alexnet", action="store_false", help="skip the binary AlexNet section"
    )
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
