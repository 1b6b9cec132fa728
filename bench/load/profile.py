"""Where a prediction's time goes: py-spy samples the API and the extractor process under load.

    python -m bench.load.profile [--seconds 20] [--clients 1,8] [--out bench/results/profile.md]

Starts a private `headhub up` (`--code DIR`: of another checkout), trains one float head, then for
each client count runs a closed loop of single-image `POST /v1/predict` requests (the photos
`bench.load` sends) while `py-spy record` samples the API and the
extractor process (`--nonblocking`, so the sampled processes are never paused). Each sample's
Python stack is put in the first matching category of `CATEGORIES` (the innermost frame that
matches wins), and the table gives each category's share of that process's samples, idle
included. py-spy must be installed (`pip install py-spy`; it needs ptrace rights).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench.load.__main__ import headhub_up, photos
from bench.load.generator import run_level
from bench.load.scenario import Scenario

RESULTS = Path(__file__).resolve().parents[1] / "results" / "profile.md"

# (category, pattern on "function (file)") — the innermost frame matching any pattern decides.
CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern))
    for name, pattern in [
        (
            "thread-pool hops (hand-off, wake-ups)",
            r"_write_to_self|call_soon_threadsafe|run_in_executor|to_thread|run_sync_in_worker|"
            r"threading\.py|concurrent/futures|run_in_threadpool",
        ),
        ("network forward (kernels, torch)", r"extractor/kernels/|torch/nn/|inference\.py"),
        ("image decode + resize (PIL)", r"PIL/|imaging\.py|admission\.py:.*request_pixels"),
        ("multipart parsing", r"multipart|formparsers|datastructures\.py.*UploadFile|tempfile"),
        ("database (SQLAlchemy, sqlite3, psycopg)", r"sqlalchemy/|sqlite3|psycopg|/db\.py"),
        (
            # anyio's socket streams carry httpcore's requests (uvicorn does not use them)
            "HTTP client to extractor (httpx, its socket writes)",
            r"httpx/|httpcore/|h11/_connection.*client|SocketStream\.(send|receive) \(anyio",
        ),
        ("head evaluation (numpy)", r"heads/evaluate\.py|numpy/"),
        ("JSON / pydantic encoding", r"json/|pydantic|encoders\.py|jsonable"),
        ("wire format, sign packing", r"extractor/wire\.py|packing\.py"),
        ("micro-batcher", r"batcher\.py"),
        ("HTTP server (uvicorn, h11, httptools)", r"uvicorn/|h11/|httptools"),
        ("framework (starlette, fastapi, anyio)", r"starlette/|fastapi/|anyio/"),
        ("asyncio event loop", r"asyncio/|uvloop"),
        ("service code", r"service/|extractor/"),
    ]
]
IDLE = re.compile(
    r"select \(selectors|_worker \(concurrent|wait \(threading|_take_batch|"
    r"epoll|run_forever|notifies|get_message|_run \(service/http/invalidation"
)


def _children(pid: int) -> dict[str, int]:
    """The `headhub up` supervisor's children by role, from /proc."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != pid:
            continue
        for role in ("extractor", "api", "worker"):
            if f"cli {role}" in cmd:
                found[role] = int(entry.name)
    return found


_PREFIX = re.compile(
    r"\(/[^;()]*?/(?:lib/python3\.\d+/site-packages|site-packages|lib/python3\.\d+)/"
)
_TREE = re.compile(r"\(/[^;()]*?/(?=(?:service|extractor|bench)/)")


def _short(stack: str) -> str:
    """py-spy's short file names from full ones: `(fastapi/routing.py:1)`, `(service/x.py:2)`."""
    return _TREE.sub("(", _PREFIX.sub("(", stack))


def _classify(stack: str) -> str:
    frames = _short(stack).split(";")
    if frames and IDLE.search(frames[-1]):
        return "idle (waiting on sockets, queues, locks)"
    for frame in reversed(frames):
        for name, pattern in CATEGORIES:
            if pattern.search(frame):
                return name
    return "other"


def summarize(raw: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        counts[_classify(stack)] += int(n)
    return counts


def _provenance(raw: str, code: Path | None) -> list[str]:
    """Which checkout the sampled service code came from: the share of samples with a frame
    under `code` (or under this checkout) among those with any `service/` or `extractor/` frame."""
    root = str((code or Path(__file__).resolve().parents[2]).resolve())
    ours = theirs = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or not re.search(r"/(service|extractor)/\w+", stack):
            continue
        if f"{root}/service/" in stack or f"{root}/extractor/" in stack:
            ours += int(n)
        else:
            theirs += int(n)
    total = ours + theirs
    if not total:
        return []
    return [f"Samples in headhub code: {100 * ours / total:.0f}% from `{root}`.", ""]


def _table(title: str, counts: Counter[str], rate: int, requests: int) -> list[str]:
    """Each category's share, and its sampled time per request (samples / rate / requests): the
    column that compares across runs of different throughput."""
    total = sum(counts.values()) or 1
    busy = total - counts.get("idle (waiting on sockets, queues, locks)", 0)
    per_req = 1000 / rate / max(1, requests)
    lines = [
        f"**{title}** ({total} samples, {100 * busy / total:.0f}% busy, "
        f"{busy * per_req:.2f} ms busy per request)",
        "",
    ]
    lines += [
        "| where | share of samples | share of busy samples | ms per request |",
        "|---|---:|---:|---:|",
    ]
    for name, n in counts.most_common():
        of_busy = "-" if name.startswith("idle") else f"{100 * n / max(1, busy):.1f}%"
        lines.append(f"| {name} | {100 * n / total:.1f}% | {of_busy} | {n * per_req:.2f} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.load.profile", description=__doc__)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--clients", default="1,8")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--label", default="", help="a heading for this run (e.g. before/after)")
    p.add_argument("--keep", type=Path, help="a folder for py-spy's raw stacks")
    p.add_argument("--append", action="store_true", help="append to --out instead of replacing")
    p.add_argument(
        "--code",
        type=Path,
        help="profile the service of another checkout (e.g. `git worktree add /tmp/hh-before "
        "8ef2a67`); the table says what share of samples ran code from it",
    )
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    images = photos()  # the photos bench.load sends
    sections: list[str] = []
    with headhub_up(code=args.code) as (url, key, _ext):
        sc = Scenario(url, key)
        sc.tenant()
        ds = sc.dataset(20)
        job = sc.wait(sc.start_job(ds, "colours", "float"))
        ref = job["head_version"]["ref"]
        up_pid = _up_pid(url)
        roles = _children(up_pid)
        asyncio.run(run_level(url, sc.owner_key, ref, images, 2, 3))  # warm up
        for clients in [int(c) for c in args.clients.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                procs = {
                    role: subprocess.Popen(
                        [
                            spy,
                            "record",
                            "--pid",
                            str(roles[role]),
                            "--rate",
                            str(args.rate),
                            "--duration",
                            str(int(args.seconds)),
                            "--nonblocking",
                            "--full-filenames",  # which checkout ran (`_provenance`)
                            "--threads",
                            "--format",
                            "raw",
                            "--output",
                            f"{tmp}/{role}.txt",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    for role in ("api", "extractor")
                }
                level = asyncio.run(
                    run_level(url, sc.owner_key, ref, images, clients, args.seconds)
                )
                for proc in procs.values():
                    proc.wait(300)
                raws = {role: Path(f"{tmp}/{role}.txt").read_text() for role in procs}
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for role, raw in raws.items():
                    (args.keep / f"{role}-{clients}.txt").write_text(raw)
            p50 = 1000 * level.percentile(50)
            errors = {k: v for k, v in level.statuses.items() if k != "200"}
            sections.append(
                f"### {clients} client(s): {level.ok / level.seconds:.1f} req/s, p50 {p50:.1f} ms,"
                f" errors {errors or 0}"
            )
            sections.append("")
            for role in ("api", "extractor"):
                sections += _table(
                    f"{role} process",
                    summarize(raws[role]),
                    args.rate,
                    sum(level.statuses.values()),
                )
                sections += _provenance(raws[role], args.code)
    head = [
        f"## {args.label or 'Profile'}",
        "",
        f"Command: `python -m bench.load.profile {' '.join(argv or sys.argv[1:])}`; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}, load average "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
    ]
    text = "\n".join(head + sections) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.out.exists():
        text = args.out.read_text() + "\n" + text
    args.out.write_text(text)
    print(text)


def _up_pid(url: str) -> int:
    """The `headhub up` process serving `url`: a child of this one whose command says `up`."""
    port = url.rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if " up --port " + port in cmd:
            return int(entry.name)
    raise RuntimeError("headhub up not found")


if __name__ == "__main__":
    main()
