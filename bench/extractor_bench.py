"""Extractor throughput: the packed binary network against the same architecture in float.

    .venv/bin/python -m bench.extractor_bench [--checkpoint PATH] [--seconds 2] [--threads N]

For batch sizes 1, 8 and 32 it times `forward_features` (the work the extractor process does per
dynamic batch) and reports images/s and the p50 latency of one batch, for:
- `binary (reference)`: the packed checkpoint as served by `headhub extractor serve --reference`
  (±1 weights and activations in float tensors, BN folded);
- `binary (fast)`: the registered fast kernels, when `extractor.inference` has one;
- `float`: the training module of the same architecture with binarization off (real weights and
  activations), i.e. the network the paper compares against, with the batch norms after its real
  convs folded into them as the checkpoint's inference network has;
- `float teacher`: EfficientNet-Lite0 (`extractor.teacher`) at its native 224 px with its batch
  norms folded (`teacher.fold_batchnorm`), the network the binary extractor was distilled from
  and whose features give the transfer table's teacher row.
The float baselines get the same inference-time folding as the binary network, so the ratios
compare like with like.
Sizes: the checkpoint file against float32 storage of the same parameters and the teacher's.
Runs with `keep_freed_memory()`, as the extractor server does. Writes Markdown to
`bench/results/extractor.md`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from extractor.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from extractor.inference import keep_freed_memory, select_path
from extractor.layers import fold_real_batch_norms, set_binarize
from extractor.models import create_model

BATCHES = (1, 8, 32)
TEACHER = "float teacher (EfficientNet-Lite0, 224 px)"
RESULTS = Path(__file__).resolve().parent / "results" / "extractor.md"


def time_forward(
    forward: Callable[[Tensor], Tensor], x: Tensor, seconds: float, min_iters: int = 5
) -> tuple[float, float]:
    """(images/s, p50 seconds per batch) over at least `min_iters` calls and `seconds` seconds."""
    with torch.inference_mode():
        for _ in range(3):  # warm-up: allocator, oneDNN primitive cache
            forward(x)
        laps: list[float] = []
        start = time.perf_counter()
        while len(laps) < min_iters or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            forward(x)
            laps.append(time.perf_counter() - t0)
    return x.shape[0] * len(laps) / sum(laps), statistics.median(laps)


def load_bench_teacher() -> tuple[torch.nn.Module | None, str]:
    """The distillation teacher (pretrained when its weights package is installed, else the same
    architecture randomly initialised: identical cost) and a note saying which; None without the
    distill extra."""
    try:
        from extractor.teacher import EfficientNetLite0, fold_batchnorm, load_teacher
    except ImportError as exc:
        return None, f"absent ({exc})"
    try:
        return load_teacher(fold_bn=True), "EfficientNet-Lite0, pretrained weights, BN folded"
    except Exception as exc:  # weights package not installed: the cost does not depend on them
        model = fold_batchnorm(EfficientNetLite0().eval().requires_grad_(False))
        why = type(exc).__name__
        return model, f"EfficientNet-Lite0, random init (weights unavailable: {why}), BN folded"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.extractor_bench")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per cell")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    keep_freed_memory()

    loaded = load_checkpoint(args.checkpoint)
    info = loaded.info()
    paths = {"binary (reference)": select_path(loaded, reference=True).forward}
    fast = select_path(loaded, reference=False)
    if fast.name != "reference":
        paths[f"binary (fast, {fast.details.get('instruction_set', '?')})"] = fast.forward
    float_model = create_model(loaded.arch, **loaded.metadata["config"]).eval()
    set_binarize(float_model, activations=False, weights=False)
    float_params = sum(
        p.numel() for n, p in float_model.named_parameters() if not n.startswith("head")
    )
    fold_real_batch_norms(float_model)  # after counting: folding merges BN parameters into biases
    paths["float (same architecture)"] = float_model.forward_features  # type: ignore[assignment]
    sizes = {name: tuple(loaded.pretrained_cfg["input_size"]) for name in paths}
    teacher, _ = load_bench_teacher()
    teacher_params = 0  # without its 1000-class classifier
    if teacher is not None:
        teacher_params = sum(
            p.numel() for name, p in teacher.named_parameters() if not name.startswith("_fc")
        )
    if teacher is not None:
        paths[TEACHER] = teacher.forward_features  # type: ignore[assignment]
        sizes[TEACHER] = (3, 224, 224)

    load_start = os.getloadavg()[0]
    rows: list[tuple[str, int, float, float]] = []
    for name, forward in paths.items():
        for b in BATCHES:
            x = torch.randn(b, *sizes[name])
            ips, p50 = time_forward(forward, x, args.seconds)
            rows.append((name, b, ips, p50))
            print(
                f"{name:<34} batch {b:>2}: {ips:8.1f} img/s  p50 {p50 * 1000:8.2f} ms", flush=True
            )

    by_batch = {(n, b): ips for n, b, ips, _ in rows}
    flt = "float (same architecture)"
    extra = " ".join(argv if argv is not None else sys.argv[1:])
    command = f".venv/bin/python -m bench.extractor_bench {extra}".strip()
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    busy = max(load_start, load) > cores
    warning = (
        f"**Warning: the machine was busy (1-min load average {load_start:.1f} at the start, "
        f"{load:.1f} at the end, on {cores} cores); other processes shared the CPU, so these "
        "numbers are lower and noisier than on an idle machine.**"
    )
    lines = [
        "# Extractor benchmark",
        "",
        f"Command: `{command}`",
        f"Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"Machine: {cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, 1-min load average {load_start:.1f} at the "
        f"start, {load:.1f} at the end",
        f"Checkpoint: `{args.checkpoint}` ({info['architecture']}, input "
        f"{'x'.join(map(str, info['input_size']))}, {info['feature_dim']} features, id "
        f"`{info['id'][:12]}`, provenance: {loaded.metadata.get('provenance', {}).get('kind')})",
        "",
        *([warning, ""] if busy else []),
        "Time of `forward_features` on random normalised input (the work of one dynamic batch; "
        "image decoding and HTTP excluded); p50 is the median latency of one batch.",
        "",
        "| network | batch | images/s | p50 latency (ms) |",
        "|---|---:|---:|---:|",
        *(f"| {n} | {b} | {ips:.1f} | {p50 * 1000:.2f} |" for n, b, ips, p50 in rows),
        "",
        "Throughput relative to the float network:",
        "",
        "| batch | " + " | ".join(n for n in paths if n != flt) + " |",
        "|---:|" + "---:|" * (len(paths) - 1),
        *(
            f"| {b} | "
            + " | ".join(f"{by_batch[(n, b)] / by_batch[(flt, b)]:.2f}x" for n in paths if n != flt)
            + " |"
            for b in BATCHES
        ),
        "",
        "## Size",
        "",
        "| | bytes |",
        "|---|---:|",
        f"| packed checkpoint file | {info['size_bytes']:,} |",
        f"| float32 storage of the same parameters ({float_params:,}) | {4 * float_params:,} |",
        f"| ratio | {4 * float_params / info['size_bytes']:.1f}x smaller |",
        f"| bits per parameter in the checkpoint | {info['bits_per_weight']} |",
        *(
            [
                f"| float teacher, float32 ({teacher_params:,} parameters, without its "
                f"classifier) | {4 * teacher_params:,} |",
                f"| packed checkpoint vs teacher | "
                f"{4 * teacher_params / info['size_bytes']:.1f}x smaller |",
            ]
            if teacher is not None
            else []
        ),
        "",
        "The reference path computes the binary network with float ops on ±1 values, so it does "
        "the same arithmetic as the float network and is not expected to be faster; speed comes "
        "from the bit-packed fast kernels (XNOR + popcount) when they are registered.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
