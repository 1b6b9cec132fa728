"""OpenMP wait policy: fast-path latency on a quiet machine and beside a training job.

    .venv/bin/python -m bench.wait_policy [--rounds 3]

libgomp's threads spin at the end of every parallel region before they sleep. The fast path
runs some 30 short parallel regions per forward, so spinning pays on a quiet machine; beside
another busy process (a head-training job in the worker) a spinning thread can hold the core
that its sibling needs, and a barrier then lasts a scheduler time slice. The policy is read
once when libgomp loads, so each measurement runs in a fresh interpreter with the policy in its
environment. Background load: one process running a torch training loop on 1 thread, as the
service's worker does (`worker_torch_threads = 1`), or on 2 threads (what a worker configured
with more threads, or a distillation run, would do). Policies and conditions are interleaved in
rounds, so the machine's own noise hits them alike. Writes `bench/results/wait_policy.md`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "wait_policy.md"
POLICIES: dict[str, dict[str, str]] = {
    "default (spin, then sleep)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
}

MEASURE = """
import json, sys, time, torch
from extractor.checkpoint import load_checkpoint
from extractor.kernels.network import build_fast_model
from extractor.inference import keep_freed_memory
keep_freed_memory()
torch.set_num_threads(2)
fast = build_fast_model(load_checkpoint())
out = {}
with torch.inference_mode():
    for n, reps in ((1, 60), (32, 12)):
        x = torch.randn(n, 3, 112, 112)
        for _ in range(3):
            fast.forward_features(x)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fast.forward_features(x)
            ts.append(time.perf_counter() - t0)
        out[n] = sorted(ts)[len(ts) // 2] * 1e3
print(json.dumps(out))
"""

BACKGROUND = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
net = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
opt = torch.optim.Adam(net.parameters())
x, y = torch.randn(256, 512), torch.randint(0, 10, (256,))
while True:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
"""


def measure(extra_env: dict[str, str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE],
        env=env | extra_env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {k: float(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wait_policy", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    load0 = os.getloadavg()
    for _ in range(args.rounds):
        for threads in (0, 1, 2):
            condition = f"beside a {threads}-thread training loop" if threads else "quiet"
            bg = None
            if threads:
                bg = subprocess.Popen([sys.executable, "-c", BACKGROUND, str(threads)])
            try:
                for name, env in POLICIES.items():
                    runs.setdefault((condition, name), []).append(measure(env))
            finally:
                if bg is not None:
                    bg.kill()
                    bg.wait()
    lines = [
        "# OpenMP wait policy: fast-path latency, quiet and beside a training job",
        "",
        f"- command: `.venv/bin/python -m bench.wait_policy --rounds {args.rounds}`",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"{os.cpu_count()} logical CPUs, extractor at 2 torch threads, default checkpoint",
        f"- load average at start: {load0[0]:.2f} (the machine is shared)",
        "",
        "Median over rounds of each run's p50 `forward_features` latency (ms).",
        "",
        "| condition | policy | batch 1 ms | batch 32 ms |",
        "|---|---|---|---|",
    ]
    for (condition, name), rs in runs.items():
        b1 = statistics.median(r["1"] for r in rs)
        b32 = statistics.median(r["32"] for r in rs)
        lines.append(f"| {condition} | {name} | {b1:.2f} | {b32:.2f} |")
    report = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
