"""Load benchmark: predictions at rising concurrency while a training job runs.

    python -m bench.load                       # starts its own `headhub up` in a temp dir
    python -m bench.load --url http://host:8000 --key $HEADHUB_ADMIN_KEY \
        --extractor-url http://host:8001       # against a running service

Writes bench/results/load.md (the command, the machine, one row per concurrency level).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.load.generator import LevelResult, batch_totals, run_level
from bench.load.scenario import COLOURS, Scenario, synthetic_png

RESULTS = Path(__file__).resolve().parents[1] / "results" / "load.md"
HEADHUB = [sys.executable, "-m", "service.commands.cli"]  # the `headhub` console script


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no free pair of ports")


@contextmanager
def headhub_up(timeout: float = 180) -> Iterator[tuple[str, str, str]]:
    """A private `headhub up` (rate limit off: we measure serving, not the limiter)."""
    with tempfile.TemporaryDirectory(prefix="headhub-load-") as tmp:
        port = _free_port_pair()
        env = os.environ | {"HEADHUB_RATE_LIMIT_PER_MINUTE": "0", "HEADHUB_LOG_LEVEL": "WARNING"}
        env.pop("HEADHUB_ADMIN_KEY", None)
        log = open(Path(tmp) / "up.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [*HEADHUB, "up", "--port", str(port), "--data-dir", tmp],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "headhub up did not become ready:\n" + (Path(tmp) / "up.log").read_text()
                    )
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            key = (Path(tmp) / "admin_key").read_text().strip()
            yield url, key, f"http://127.0.0.1:{port + 1}"
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def _fmt_ms(s: float) -> str:
    return "-" if s != s else f"{1000 * s:.0f}"  # NaN-safe


def report(rows: list[LevelResult], meta: dict[str, str]) -> str:
    lines = [
        "# Load: predictions while a training job runs",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Measured {meta['when']} on {meta['machine']}; load average (1/5/15 min) at the end",
        f"{meta['load']}. The load generator, API, extractor and worker share that machine.",
        "Each level is a closed loop: N clients, each sending one",
        "image to `POST /v1/predict` (one float head, top-3) as soon as its previous answer",
        f"arrived, for {meta['seconds']} s. Latency percentiles are over successful requests;",
        "errors are every other outcome by status. The batch column is the extractor's mean",
        "images per forward pass during the level (from its `/metrics`), which shows dynamic",
        "batching at work.",
        "",
        f"Background training job during the run: {meta['job']}.",
        "",
        "| clients | requests/s | p50 ms | p95 ms | p99 ms | ok | errors | extractor batch |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items()) if k != "200")
        batch = "-" if r.batch_mean is None else f"{r.batch_mean:.2f}"
        lines.append(
            f"| {r.concurrency} | {r.ok / r.seconds:.1f} | {_fmt_ms(r.percentile(50))} "
            f"| {_fmt_ms(r.percentile(95))} | {_fmt_ms(r.percentile(99))} | {r.ok} "
            f"| {errs or '0'} | {batch} |"
        )
    lines.append("")
    return "\n".join(lines)


def run(
    url: str,
    key: str,
    extractor_url: str | None,
    levels: list[int],
    seconds: float,
    per_label: int,
    command: str,
    out: Path,
) -> str:
    sc = Scenario(url, key)
    sc.tenant()
    ds = sc.dataset(per_label)
    first = sc.wait(sc.start_job(ds, "colours", "float"))
    if first["status"] != "succeeded":
        raise RuntimeError(f"the head did not train: {first}")
    ref = first["head_version"]["ref"]
    background = sc.start_job(
        ds, "colours-mlp", "mlp", {"epochs": 20000, "patience": 0, "batch_size": 4, "hidden": 2048}
    )
    images = [
        (f"q{i}.png", synthetic_png(c, 50_000 + i))
        for i, c in enumerate(list(COLOURS.values()) * 4)
    ]
    rows = []
    for c in levels:
        before = batch_totals(extractor_url)
        row = asyncio.run(run_level(url, sc.owner_key, ref, images, c, seconds))
        after = batch_totals(extractor_url)
        if before and after and after[1] > before[1]:
            row.batch_mean = (after[0] - before[0]) / (after[1] - before[1])
        rows.append(row)
        errors = {k: v for k, v in row.statuses.items() if k != "200"}
        print(
            f"clients={c}: {row.ok / seconds:.1f} req/s, p50 {_fmt_ms(row.percentile(50))} ms,"
            f" p99 {_fmt_ms(row.percentile(99))} ms, errors {errors or 0}",
            flush=True,
        )
    job = sc.job(background)
    meta = {
        "command": command,
        "seconds": f"{seconds:g}",
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}",
        "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "job": f"`mlp` head, status `{job['status']}` at the end, progress "
        f"{100 * float(job.get('progress') or 0):.0f}%",
    }
    text = report(rows, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", help="a running API; default: start a private `headhub up`")
    p.add_argument("--key", default=os.environ.get("HEADHUB_ADMIN_KEY"), help="admin key")
    p.add_argument("--extractor-url", help="for the batch-size column (default with --url: none)")
    p.add_argument("--levels", default="1,2,4,8,16,32", help="concurrency levels")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each level")
    p.add_argument("--per-label", type=int, default=20, help="training images per label")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    command = "python -m bench.load " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.url:
        if not args.key:
            p.error("--key (or HEADHUB_ADMIN_KEY) is required with --url")
        text = run(
            args.url,
            args.key,
            args.extractor_url,
            levels,
            args.seconds,
            args.per_label,
            command.strip(),
            args.out,
        )
    else:
        with headhub_up() as (url, key, ext):
            text = run(
                url, key, ext, levels, args.seconds, args.per_label, command.strip(), args.out
            )
    print(text)


if __name__ == "__main__":
    main()
