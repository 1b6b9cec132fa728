"""Load benchmark: the service-path ratios in one run, then predictions at rising concurrency
while a training job runs.

    python -m bench.load                       # starts its own `headhub up` in a temp dir
    python -m bench.load --quick               # a smoke run (about a minute)
    python -m bench.load --url http://host:8000 --key $HEADHUB_ADMIN_KEY \
        --extractor-url http://host:8001       # against a running service

With an extractor URL (always with its own `headhub up`) it first measures, in interleaved
rounds on the same photos: the extractor package's in-process forward + decode, the extractor
process alone over HTTP, the API with 1 and 8 heads, 32-image requests, 8 concurrent clients, and
the peer (`bench/load/peer.py`, FastAPI + onnxruntime serving the float teacher), and checks the
ratios of `bench/load/ratios.py`. Writes bench/results/load.md (the command, the machine, the
ratio table with PASS/FAIL, one row per concurrency level).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.load.generator import (
    CLIENTS,
    LevelResult,
    Send,
    batch_totals,
    closed_loop,
    multipart_sender,
    run_level,
)
from bench.load.ratios import cpu_facts, floor_lines, measures_table, ratio_table, ratios
from bench.load.scenario import COLOURS, Scenario, synthetic_png

RESULTS = Path(__file__).resolve().parents[1] / "results" / "load.md"
HEADHUB = [sys.executable, "-m", "service.commands.cli"]  # the `headhub` console script
CLIENT_WORDS = {
    "lean": "httpx's client on `extractor.transport.LeanTransport`, the plain asyncio + httptools "
    "HTTP/1.1 exchange the API itself uses to call its extractor (`--client httpx` takes httpx's "
    "own transport; profile.md, Round 3, compares the two)",
    "httpx": "httpx's own transport (`--client lean`, the default, is the API's own lean one)",
}


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


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float, log: Path) -> None:
    """Until `url` answers 200; RuntimeError with the log if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} did not become ready:\n" + log.read_text())
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)


@contextmanager
def headhub_up(
    timeout: float = 180, code: Path | None = None, api_workers: int = 1
) -> Iterator[tuple[str, str, str]]:
    """A private `headhub up` (rate limit off: we measure serving, not the limiter); `code`: a
    checkout (e.g. a `git worktree` of an older commit) whose packages it runs instead;
    `api_workers`: `headhub up --api-workers`."""
    with tempfile.TemporaryDirectory(prefix="headhub-load-") as tmp:
        port = _free_port_pair()
        env = os.environ | {
            "HEADHUB_RATE_LIMIT_PER_MINUTE": "0",  # per key, tenant and address: all off
            "HEADHUB_RATE_LIMIT_TENANT_PER_MINUTE": "0",
            "HEADHUB_RATE_LIMIT_ADDRESS_PER_MINUTE": "0",
            "HEADHUB_LOG_LEVEL": "WARNING",
        }
        env.pop("HEADHUB_ADMIN_KEY", None)
        if code is not None:  # `-m` puts the working directory first on sys.path: run there
            env["PYTHONPATH"] = str(code)
        log = open(Path(tmp) / "up.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [*HEADHUB, "up", "--port", str(port), "--data-dir", tmp]
            + (["--api-workers", str(api_workers)] if api_workers > 1 else []),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=code,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, f"{url}/readyz", timeout, Path(tmp) / "up.log")
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


def photos() -> list[tuple[str, bytes]]:
    """The images every measurement sends: six scikit-image photos (300 to 1000 px a side) as
    JPEG, the same bytes for headhub, its extractor, the in-process path and the peer."""
    import io

    from PIL import Image

    try:
        from skimage import data
    except ImportError:  # pragma: no cover - scikit-image is a dev dependency
        return [
            (f"s{i}.png", synthetic_png(c, 70_000 + i, 256)) for i, c in enumerate(COLOURS.values())
        ]
    out = []
    for name in (
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
    ):
        buf = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buf, "JPEG", quality=90)
        out.append((f"{name}.jpg", buf.getvalue()))
    return out


@contextmanager
def _module_server(module: str, args: list[str], tmp: Path) -> Iterator[str]:
    """`python -m module ... --port P` in its own process, until its /healthz answers."""
    port = _free_port_pair()
    name = module.rsplit(".", 1)[-1]
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, f"{url}/healthz", 120, tmp / f"{name}.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def peer_server(tmp: Path) -> Iterator[str]:
    """bench/load/peer.py in its own uvicorn process: the teacher exported to ONNX now."""
    model = tmp / "peer.onnx"  # exported in a child, so torch.onnx leaves this process as it was
    subprocess.run(
        [sys.executable, "-m", "bench.load.peer", "export", str(model)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with _module_server("bench.load.peer", ["serve", str(model)], tmp) as url:
        yield url


def relay_server(tmp: Path, extractor_url: str) -> contextlib.AbstractContextManager[str]:
    """bench/load/relay.py in its own uvicorn process, relaying to `extractor_url`."""
    return _module_server("bench.load.relay", ["--to", extractor_url], tmp)


class InProcess:
    """The extractor package's own path for one image: decode + preprocess + forward."""

    def __init__(self) -> None:
        import torch

        from extractor.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
        from extractor.inference import keep_freed_memory, select_path

        # as `headhub extractor serve` sets itself up: glibc keeps activation buffers, one
        # inter-op thread, torch's default intra-op threads
        keep_freed_memory()
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        self.torch = torch
        self.default_threads = torch.get_num_threads()
        self.loaded = load_checkpoint(DEFAULT_CHECKPOINT)
        self.path = select_path(self.loaded)

    def latencies(
        self, images: list[tuple[str, bytes]], n: int, threads: int | None = None
    ) -> list[float]:
        """`n` timings (after two warm-ups) with `threads` intra-op threads (None: torch's)."""
        from extractor.imaging import load_tensor

        out = []
        self.torch.set_num_threads(threads or self.default_threads)
        with self.torch.inference_mode():
            for i in range(n + 2):
                name, data = images[i % len(images)]
                start = time.perf_counter()
                x = load_tensor(data, name, self.loaded.pretrained_cfg)[None]
                self.path.forward(x)
                if i >= 2:  # two warm-up passes
                    out.append(time.perf_counter() - start)
        return out


def _p(xs: list[float], q: float) -> float:
    from bench.load.generator import LevelResult

    r = LevelResult(1, 1.0, list(xs))
    return r.percentile(q)


def measure_ratios(
    url: str,
    owner_key: str,
    extractor_url: str,
    peer_url: str,
    relay_url: str,
    refs: list[str],
    images: list[tuple[str, bytes]],
    *,
    rounds: int,
    n: int,
    n32: int,
    c8_seconds: float,
    client: str = "lean",
    log: Any = print,
) -> dict[str, float]:
    """Every "What must hold" number but the training one, in `rounds` interleaved rounds (each
    target in turn, so a neighbour's load on the shared host hits all alike)."""
    from extractor.wire import IMAGES_CONTENT_TYPE, encode_images

    auth = {"Authorization": f"Bearer {owner_key}"}

    def framed(k: int) -> Send:
        def send(http: httpx.AsyncClient, rng: Any) -> Any:
            body = encode_images([rng.choice(images) for _ in range(k)])
            return http.post(
                "/v1/features", content=body, headers={"content-type": IMAGES_CONTENT_TYPE}
            )

        return send

    one = {"heads": refs[0], "top_k": "3"}
    eight = {"heads": ",".join(refs[:8]), "top_k": "3"}
    targets: dict[str, tuple[str, Send, dict[str, str]]] = {
        "ext": (extractor_url, framed(1), {}),
        "api": (url, multipart_sender("/v1/predict", images, one), auth),
        "api8": (url, multipart_sender("/v1/predict", images, eight), auth),
        "peer": (peer_url, multipart_sender("/predict", images, {"top_k": "3"}), {}),
        "relay": (relay_url, framed(1), {}),
    }
    big = {
        "ext32": (extractor_url, framed(32), {}),
        "api32": (url, multipart_sender("/v1/predict", images, one, n=32), auth),
    }
    conc = ("ext", "api", "peer", "relay")
    inproc = InProcess()
    lat: dict[str, list[float]] = {k: [] for k in ["inproc_default", "inproc_1t", *targets]}
    ips: dict[str, list[float]] = {k: [] for k in big}
    c8: dict[str, list[LevelResult]] = {k: [] for k in conc}
    errors: Counter[str] = Counter()

    def loop(base: str, send: Send, hdr: dict[str, str], c: int, secs: float, req: Any) -> Any:
        r = asyncio.run(
            closed_loop(base, send, c, secs, requests=req, headers=hdr, warmup=2, client=client)
        )
        errors.update({k: v for k, v in r.statuses.items() if k != "200"})
        return r

    for i in range(rounds):
        # torch's default threads (the extractor process's setting) and one thread: on a shared
        # 2-core host one is often faster for one image; the faster is the in-process reference
        lat["inproc_default"] += inproc.latencies(images, n)
        lat["inproc_1t"] += inproc.latencies(images, n, threads=1)
        for k, (base, send, hdr) in targets.items():
            lat[k] += loop(base, send, hdr, 1, 600, n).latencies
        for k, (base, send, hdr) in big.items():
            r = loop(base, send, hdr, 1, 600, n32)
            ips[k].append(32 * r.ok / sum(r.latencies))
        for k in conc:
            base, send, hdr = targets[k]
            c8[k].append(loop(base, send, hdr, 8, c8_seconds, None))
        log(
            f"round {i + 1}/{rounds}: "
            + ", ".join(f"{k} p50 {1000 * _p(v, 50):.1f} ms" for k, v in lat.items())
        )
    if errors:
        raise RuntimeError(f"errors while measuring the ratios: {dict(errors)}")
    m = {f"{k}_p50": _p(v, 50) for k, v in lat.items()}
    m["inproc_p50"] = min(m["inproc_default_p50"], m["inproc_1t_p50"])
    m["inproc_threads"] = float(inproc.default_threads)
    m["ext32_ips"] = statistics.median(ips["ext32"])
    m["api32_ips"] = statistics.median(ips["api32"])
    for k, levels in c8.items():
        all_lat = [x for r in levels for x in r.latencies]
        m[f"{k}_c8_rps"] = sum(r.ok for r in levels) / sum(r.seconds for r in levels)
        m[f"{k}_c8_p50"] = _p(all_lat, 50)
        m[f"{k}_c8_p95"] = _p(all_lat, 95)
    return m


def report(rows: list[LevelResult], meta: dict[str, str], m: dict[str, float] | None = None) -> str:
    model, isa = cpu_facts()
    lines = [
        "# Load: the service path against the extractor, the in-process network and a peer",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Measured {meta['when']} on {model} ({isa}), {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; load average (1/5/15 min) {meta['load_start']} at the "
        f"start and {meta['load']} at the end (the host is shared; other processes seen running "
        f"during the run: {meta['neighbours']}). The "
        "load generator, the API, the extractor, the worker and the peer share those cores; "
        f"the run took {meta['took']}. The load generator's HTTP client, the same for every "
        f"target: {CLIENT_WORDS[meta['client']]}.",
        "",
    ]
    if m is not None:
        lines += [
            "## The service-path ratios, measured in this one run",
            "",
            "Sequential latencies are the median over "
            f"{meta['rounds']} interleaved rounds (each target in turn, so the neighbours' load "
            "falls on all alike); every request is one of the same scikit-image photos "
            "(six, JPEG, 300 to 1000 px a side). headhub's API gets multipart `files` from the "
            "client and calls "
            "its extractor over a Unix socket (`headhub up`); the extractor alone is called over "
            "TCP with the framed images body the API itself sends (`application/x-headhub-images`)."
            " The in-process row is `extractor.imaging.load_tensor` + `select_path(...).forward` "
            "of the shipped default checkpoint in the benchmark's own process. The peer is "
            "`bench/load/peer.py`: FastAPI + onnxruntime (default session options) serving the "
            "float teacher EfficientNet-Lite0 at 224 px with one linear head, exported with "
            "`torch.onnx` at bench time, multipart upload, in its own uvicorn process. Where "
            "the time goes, and why the failing ratios fail here: "
            "[profile.md](profile.md) (`python -m bench.load.profile`).",
            "",
            *ratio_table(ratios(m)),
            "",
            *floor_lines(m),
            "",
            *measures_table(m),
            "",
        ]
    lines += [
        "## Load while a training job runs",
        "",
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


def _busy_neighbours() -> set[str]:
    """Running processes outside this benchmark's own tree (a distillation run at nice 15,
    another session's tests), as `command` at nice N, from /proc."""
    procs: dict[int, tuple[int, str, int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        procs[int(entry.name)] = (int(fields[1]), fields[0], int(fields[16]), cmd)
    found = set()
    for pid, (_ppid, state, nice, cmd) in procs.items():
        up, ours = pid, False
        while up in procs and not ours:
            ours, up = up == os.getpid(), procs[up][0]
        if state == "R" and cmd and not ours:
            found.add(f"`{' '.join(cmd.split()[:4])[:80]}` at nice {nice}")
    return found


def _neighbours(seen: set[str]) -> str:
    return "; ".join(sorted(seen)) or "no other process was running when sampled"


def run(
    url: str,
    key: str,
    extractor_url: str | None,
    levels: list[int],
    seconds: float,
    per_label: int,
    command: str,
    out: Path,
    *,
    quick: bool = False,
    client: str = "lean",
) -> str:
    began = time.monotonic()
    load_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    seen = _busy_neighbours()
    sc = Scenario(url, key)
    sc.tenant()
    ds = sc.dataset(per_label)
    jobs = [sc.start_job(ds, f"colours-{i}", "float") for i in range(8)]
    refs = []
    for job_id in jobs:
        done = sc.wait(job_id)
        if done["status"] != "succeeded":
            raise RuntimeError(f"the head did not train: {done}")
        refs.append(done["head_version"]["ref"])
    print(f"8 heads trained in {time.monotonic() - began:.0f} s", flush=True)
    ref = refs[0]
    images = photos()
    m = None
    if extractor_url:
        with (
            tempfile.TemporaryDirectory(prefix="headhub-peer-") as tmp,
            peer_server(Path(tmp)) as peer_url,
            relay_server(Path(tmp), extractor_url) as relay_url,
        ):
            m = measure_ratios(
                url,
                sc.owner_key,
                extractor_url,
                peer_url,
                relay_url,
                refs,
                images,
                rounds=2 if quick else 4,
                n=10 if quick else 50,
                n32=2 if quick else 6,
                c8_seconds=1.5 if quick else 6,
                client=client,
                log=lambda s: print(s, flush=True),
            )
    background = sc.start_job(
        ds, "colours-mlp", "mlp", {"epochs": 5000, "patience": 0, "batch_size": 4, "hidden": 2048}
    )
    while sc.job(background)["status"] == "queued":
        time.sleep(0.2)
    rows = []
    for c in levels:
        seen |= _busy_neighbours()
        before = batch_totals(extractor_url)
        row = asyncio.run(run_level(url, sc.owner_key, ref, images, c, seconds, client))
        after = batch_totals(extractor_url)
        if before and after and after[1] > before[1]:
            row.batch_mean = (after[0] - before[0]) / (after[1] - before[1])
        rows.append(row)
        errors = {k: v for k, v in row.statuses.items() if k != "200"}
        print(
            f"clients={c}: {row.ok / row.seconds:.1f} req/s, p50 {_fmt_ms(row.percentile(50))} ms,"
            f" p99 {_fmt_ms(row.percentile(99))} ms, errors {errors or 0}",
            flush=True,
        )
    job = sc.job(background)
    if m is not None:
        m["load_errors"] = float(sum(r.errors for r in rows))
    meta = {
        "command": command,
        "seconds": f"{seconds:g}",
        "rounds": "2" if quick else "4",
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": load_start,
        "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "neighbours": _neighbours(seen | _busy_neighbours()),
        "took": f"{(time.monotonic() - began) / 60:.1f} min",
        "client": client,
        "job": f"`mlp` head, status `{job['status']}` at the end, progress "
        f"{100 * float(job.get('progress') or 0):.0f}%",
    }
    text = report(rows, meta, m)
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
    p.add_argument(
        "--api-workers",
        type=int,
        default=1,
        help="API worker processes (`headhub up --api-workers`)",
    )
    p.add_argument(
        "--client",
        choices=CLIENTS,
        default="lean",
        help="the load generator's HTTP client for every target: the API's own lean transport "
        "(default) or httpx's",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: fewer requests, levels 1,4 for 2 s each, 8 images per label",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.levels, args.seconds, args.per_label = "1,4", 2.0, 8
    levels = [int(x) for x in args.levels.split(",")]
    command = "python -m bench.load " + shlex.join(argv if argv is not None else sys.argv[1:])
    rest = (levels, args.seconds, args.per_label, command.strip(), args.out)
    if args.url:
        if not args.key:
            p.error("--key (or HEADHUB_ADMIN_KEY) is required with --url")
        text = run(
            args.url, args.key, args.extractor_url, *rest, quick=args.quick, client=args.client
        )
    else:
        with headhub_up(api_workers=args.api_workers) as (url, key, ext):
            text = run(url, key, ext, *rest, quick=args.quick, client=args.client)
    print(text)


if __name__ == "__main__":
    main()
