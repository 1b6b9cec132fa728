"""Serving two extractors: one process with both networks, or one process per network.

Both layouts serve the shipped checkpoint and a second one of the same architecture
(`headhub extractor random-init --seed 1`): layout `one process` is `headhub extractor serve
--checkpoint-dir` (each network with its own micro-batcher and inference thread), layout
`two processes` is two `headhub extractor serve`, one network each. For each: seconds to ready,
resident memory (RSS) after warm-up and its peak after load, and a mixed load (`--clients`
concurrent clients, half on each network, `--files` images per request) for `--seconds`:
images per second per network and request latency. Layouts alternate for `--rounds` rounds, so
a shared machine's load hits both alike; medians are reported.

    .venv/bin/python -m bench.extractor_serving_bench [--rounds 2] [--seconds 20]

Writes bench/results/extractor_serving.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.training_bench import _png

RESULTS = Path(__file__).resolve().parent / "results" / "extractor_serving.md"


@dataclass
class Layout:
    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # network id -> (base URL, query params that select it)
    routes: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    def rss_mb(self, key: str = "VmRSS") -> float:
        total = 0
        for p in self.procs:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        return total / 1024

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def _serve(root: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    from tests.fixtures.processes import free_port

    port = free_port()
    log = (root / f"{name}-{port}.log").open("wb")
    cmd = [
        sys.executable,
        "-m",
        "service.commands.cli",
        "extractor",
        "serve",
        "--port",
        str(port),
        *args,
    ]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), f"http://127.0.0.1:{port}"


def _wait_ready(urls: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    pending = set(urls)
    while pending and time.monotonic() < deadline:
        for url in list(pending):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    pending.discard(url)
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    if pending:
        raise RuntimeError(f"not ready: {pending}")


def start(
    kind: str, root: Path, default: Path, second: Path, second_id: str, default_id: str
) -> tuple[Layout, float]:
    """(layout, seconds until every process answered /readyz)."""
    t0 = time.perf_counter()
    layout = Layout(kind)
    if kind == "one process":
        directory = root / "dir"
        proc, url = _serve(root, "both", "--checkpoint", str(default),
                           "--checkpoint-dir", str(directory))  # fmt: skip
        layout.procs = [proc]
        layout.routes = {default_id: (url, {}), second_id: (url, {"extractor": second_id})}
        _wait_ready([url])
    else:
        p1, u1 = _serve(root, "first", "--checkpoint", str(default))
        p2, u2 = _serve(root, "second", "--checkpoint", str(second))
        layout.procs = [p1, p2]
        layout.routes = {default_id: (u1, {}), second_id: (u2, {})}
        _wait_ready([u1, u2])
    return layout, time.perf_counter() - t0


async def load(layout: Layout, clients: int, files: int, seconds: float) -> dict[str, Any]:
    """`clients` concurrent clients, alternating networks, for `seconds`."""
    images = [(f"{i}.png", _png(i % 10, i)) for i in range(64)]
    done: dict[str, int] = dict.fromkeys(layout.routes, 0)
    latencies: dict[str, list[float]] = {k: [] for k in layout.routes}
    errors = 0
    deadline = time.monotonic() + seconds
    ids = list(layout.routes)

    async def client(i: int) -> None:
        nonlocal errors
        ident = ids[i % len(ids)]
        url, params = layout.routes[ident]
        async with httpx.AsyncClient(timeout=120) as http:
            n = 0
            while time.monotonic() < deadline:
                batch = [images[(n * files + j + i) % len(images)] for j in range(files)]
                t0 = time.perf_counter()
                r = await http.post(
                    f"{url}/v1/features", params=params,
                    files=[("files", (name, data, "image/png")) for name, data in batch],
                )  # fmt: skip
                if r.status_code != 200:
                    errors += 1
                    await asyncio.sleep(0.05)
                    continue
                latencies[ident].append(time.perf_counter() - t0)
                done[ident] += files
                n += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - t0
    every = sorted(x for v in latencies.values() for x in v)
    return {
        "images_s": {k: v / elapsed for k, v in done.items()},
        "total_images_s": sum(done.values()) / elapsed,
        "p50_ms": 1000 * every[len(every) // 2] if every else float("nan"),
        "p95_ms": 1000 * every[int(len(every) * 0.95)] if every else float("nan"),
        "errors": errors,
    }


def run(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    from extractor.calibration import write_random_init
    from extractor.catalog import install_checkpoint
    from extractor.checkpoint import DEFAULT_CHECKPOINT, checkpoint_id

    root = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    try:
        second = root / "second.safetensors"
        write_random_init(second, seed=1)
        second_id = install_checkpoint(second, root / "dir")
        default_id = checkpoint_id(DEFAULT_CHECKPOINT.read_bytes())
        rows: dict[str, list[dict[str, Any]]] = {"one process": [], "two processes": []}
        for i in range(args.rounds):
            kinds = ["one process", "two processes"]
            for kind in kinds if i % 2 == 0 else kinds[::-1]:
                layout, ready_s = start(kind, root, DEFAULT_CHECKPOINT, second, second_id,
                                        default_id)  # fmt: skip
                try:
                    idle = layout.rss_mb()
                    result = asyncio.run(load(layout, args.clients, args.files, args.seconds))
                    peak = layout.rss_mb("VmHWM")
                finally:
                    layout.stop()
                rows[kind].append(result | {"ready_s": ready_s, "rss_mb": idle, "peak_mb": peak})
                print(kind, rows[kind][-1], flush=True)
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def med(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows)


def report(
    rows: dict[str, list[dict[str, Any]]], args: argparse.Namespace, loads: tuple[float, float]
) -> str:
    one, two = rows["one process"], rows["two processes"]
    cmd = ".venv/bin/python -m bench.extractor_serving_bench " + " ".join(sys.argv[1:])
    lines = [
        "# Serving two extractors: one process or one process per network",
        "",
        f"Command: `{cmd.strip()}`",
        f"Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"torch {torch.__version__}, 1-min load average {loads[0]:.1f} at the start, "
        f"{loads[1]:.1f} at the end (shared machine: compare rows, not files)",
        "",
        "The shipped checkpoint and `headhub extractor random-init --seed 1` (same architecture, "
        "1.5 MB each), served by one `headhub extractor serve --checkpoint-dir` or by two "
        f"processes. Load: {args.clients} concurrent clients, half on each network, "
        f"{args.files} images (64x64 PNG) per request, {args.seconds:g} s; medians of "
        f"{args.rounds} alternating rounds.",
        "",
        "| layout | ready (s) | RSS after warm-up (MB) | peak RSS (MB) | images/s, both | "
        "images/s, each round | p50 (ms) | p95 (ms) | errors |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, r in (("one process, two networks", one), ("two processes", two)):
        rounds = ", ".join(f"{x['total_images_s']:.1f}" for x in r)
        lines.append(
            f"| {name} | {med(r, 'ready_s'):.1f} | {med(r, 'rss_mb'):.0f} | "
            f"{med(r, 'peak_mb'):.0f} | {med(r, 'total_images_s'):.1f} | {rounds} | "
            f"{med(r, 'p50_ms'):.0f} | {med(r, 'p95_ms'):.0f} | {sum(x['errors'] for x in r)} |"
        )
    lines += [
        "",
        f"One process holds both networks in {med(one, 'rss_mb') / med(two, 'rss_mb'):.2f} of "
        "the memory of two (Python, torch and the kernels are loaded once; a network itself is "
        "about 25 MB of folded float weights and its packed copy), starts in "
        f"{med(one, 'ready_s') / med(two, 'ready_s'):.2f} of the time, and serves "
        f"{med(one, 'total_images_s') / med(two, 'total_images_s'):.2f} times the images per "
        "second under the same mixed load (both layouts share the same cores; compare that "
        "ratio with how much one layout's rounds differ from each other before reading a "
        "difference into it).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--files", type=int, default=4)
    args = parser.parse_args()
    before = os.getloadavg()[0]
    rows = run(args)
    text = report(rows, args, (before, os.getloadavg()[0]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
