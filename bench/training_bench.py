"""Head training time against dataset size, and POST /v1/jobs -> usable head end to end.

    .venv/bin/python -m bench.training_bench [--sizes 1000 5000 20000] [--threads 1] [--no-e2e]

Part 1 trains every head type (`float`, `binary`, `mlp`, default params, validation 0.2), and the
float head two other ways as baselines (5-fold penalty search at every size, and its previous
solver `solver=adam`), on synthetic cached feature vectors of the default extractor's width: 10
classes whose centres overlap, so early stopping and not the epoch cap ends training, as on real
data. Wall time of `train_head` only (features are already in memory, as the worker has them
after the cache read).

Part 2 (unless --no-e2e) runs the stack: a real `headhub extractor serve` process on the default
checkpoint, the API in-process over real ASGI on SQLite, and one in-process worker thread. It
uploads 1,000 generated PNGs (10 labels), then times POST /v1/jobs until the job is `succeeded`
and a prediction with the new head answers 200: once cold (the job computes all 1,000 features
through the extractor) and once warm (features cached, as for any retraining).
Writes Markdown to `bench/results/training.md`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.training import train_head

RESULTS = Path(__file__).parent / "results" / "training.md"
# (label, head type, params): every head type at its defaults, plus two baselines for the float
# default (L-BFGS, penalty cross-validated; one held-out fold from `holdout_from` examples),
# timed in the same run: k-fold at every size, and the earlier solver (the Adam epoch loop).
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("float", "float", {}),
    ("float, k-fold at any N", "float", {"holdout_from": 10**9}),
    ("float, solver=adam", "float", {"solver": "adam"}),
    ("binary", "binary", {}),
    ("mlp", "mlp", {}),
)


def feature_width() -> int:
    try:
        from extractor.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

        return int(load_checkpoint(DEFAULT_CHECKPOINT).info()["feature_dim"])
    except Exception:  # no checkpoint: the paper-sized default
        return 512


def synthetic(n: int, d: int, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Overlapping Gaussian classes, like real features: separable only in part."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)).astype(np.float32) * 0.1
    y = rng.integers(0, classes, size=n)
    x = (centres[y] + rng.normal(size=(n, d)).astype(np.float32)).astype(np.float32)
    bits = np.packbits((x >= 0).astype(np.uint8), axis=1, bitorder="little")
    return x, bits, y


def bench_trainers(sizes: list[int], d: int) -> list[dict[str, Any]]:
    rows = []
    labels = [f"class-{i}" for i in range(10)]
    for n in sizes:
        x, bits, y = synthetic(n, d)
        for label, head_type, params in VARIANTS:
            t0 = time.perf_counter()
            head = train_head(head_type, x, bits, y, labels, params, seed=0)
            seconds = time.perf_counter() - t0
            m = head.metrics
            rows.append(
                {
                    "n": n,
                    "head_type": label,
                    "seconds": seconds,
                    "epochs": m["epochs_run"],
                    "best": m["best_epoch"],
                    "val_top1": m["val_top1"],
                }
            )
            print(f"  N={n:>6} {label:<18} {seconds:7.2f}s  epochs={m['epochs_run']}", flush=True)
    return rows


# --- end to end -----------------------------------------------------------------------------


def _png(label: int, i: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(label * 100_003 + i)
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
    img = base + rng.normal(0, 40, size=(64, 64, 3))
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _start_extractor(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    from tests.fixtures.extractor import _headhub_command, free_port

    port = free_port()
    log = (log_dir / "extractor.log").open("wb")
    proc = subprocess.Popen(
        [*_headhub_command(), "extractor", "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("extractor did not become ready")


def bench_end_to_end(n_images: int = 1000) -> dict[str, float]:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.db import migrate
    from service.jobs.worker import Worker
    from service.settings import Settings

    admin = "bench-admin-key-" + "x" * 32
    auth = {"Authorization": f"Bearer {admin}"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, url = _start_extractor(root)
        try:
            settings = Settings(
                data_dir=root,
                admin_key=admin,
                extractor_urls=[url],
                featurize_on_upload=False,
                extractor_timeout_s=60,
                rate_limit_per_minute=100_000,
            )
            migrate(settings.database_url)
            app = create_app(settings)
            with TestClient(app, raise_server_exceptions=True) as client:
                client.post("/v1/tenants", json={"name": "bench"}, headers=auth).raise_for_status()
                key = client.post(
                    "/v1/tenants/bench/keys", json={"scope": "owner", "name": "b"}, headers=auth
                ).json()["key"]
                h = {"Authorization": f"Bearer {key}"}
                ds = client.post("/v1/datasets", json={"name": "bench"}, headers=h).json()["id"]
                t0 = time.perf_counter()
                per_label = n_images // 10
                for label in range(10):
                    files = [
                        ("files", (f"{i}.png", _png(label, i), "image/png"))
                        for i in range(per_label)
                    ]
                    for start in range(0, per_label, 100):
                        r = client.post(
                            f"/v1/datasets/{ds}/images",
                            data={"label": f"label-{label}"},
                            files=files[start : start + 100],
                            headers=h,
                        )
                        r.raise_for_status()
                upload_s = time.perf_counter() - t0
                worker = Worker(
                    settings, session_factory=app.state.sessionmaker, blobs=app.state.blobs
                )
                runner = threading.Thread(target=worker.run, kwargs={"install_signals": False})
                runner.start()
                try:
                    cold = _train_until_usable(client, h, ds, "bench-cold")
                    warm = _train_until_usable(client, h, ds, "bench-warm")
                finally:
                    worker.stop()
                    worker.handback.set()
                    runner.join(60)
        finally:
            proc.terminate()
            proc.wait(30)
    return {"upload_s": upload_s, **{f"cold_{k}": v for k, v in cold.items()}} | {
        f"warm_{k}": v for k, v in warm.items()
    }


def _train_until_usable(client: Any, h: dict[str, str], ds: str, head: str) -> dict[str, float]:
    t0 = time.perf_counter()
    body = {"dataset_id": ds, "head": head, "head_type": "float"}
    job = client.post("/v1/jobs", json=body, headers=h).json()
    while True:
        state = client.get(f"/v1/jobs/{job['id']}", headers=h).json()
        if state["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.2)
    if state["status"] != "succeeded":
        raise RuntimeError(f"job ended {state['status']}: {state['error']}")
    r = client.post(
        "/v1/predict",
        params={"heads": head, "top_k": 1},
        files=[("files", ("probe.png", _png(3, 999), "image/png"))],
        headers=h,
    )
    r.raise_for_status()
    return {
        "total_s": time.perf_counter() - t0,
        "train_s": float(state["metrics"]["train_seconds"]),
        "val_top1": float(state["metrics"]["val_top1"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the worker uses 1)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    d = feature_width()
    print(f"training heads on synthetic {d}-d features, {args.threads} torch thread(s)")
    rows = bench_trainers(args.sizes, d)
    e2e = None if args.no_e2e else bench_end_to_end()
    load_after = os.getloadavg()[0]

    cmd = ".venv/bin/python -m bench.training_bench " + " ".join(sys.argv[1:])
    lines = [
        "# Head training benchmark",
        "",
        f"Command: `{cmd.strip()}`",
        f"Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"torch {torch.__version__}, {args.threads} torch thread(s), 1-min load average "
        f"{load_before:.1f} at the start, {load_after:.1f} at the end",
        "",
    ]
    if max(load_before, load_after) > (os.cpu_count() or 1):
        lines += [
            f"**Warning: the machine was busy (load {load_before:.1f} -> {load_after:.1f} on "
            f"{os.cpu_count()} cores); other processes shared the CPU, so times are longer and "
            "noisier than on an idle machine.**",
            "",
        ]
    lines += [
        f"## `train_head` on N cached {d}-d vectors (10 classes, default params, 20% validation)",
        "",
        "Synthetic overlapping classes; epochs = epochs run before early stopping (best epoch); "
        "for the default float solver, penalties tried by cross-validation (the one chosen). "
        "From 10,000 vectors the default judges each penalty on one held-out fold "
        "(`holdout_from`); `float, k-fold at any N` cross-validates on all 5 folds at every "
        "size, and `float, solver=adam` is the float head's earlier default: the two "
        "baselines for its time and top-1.",
        "",
        "| N | head | seconds | epochs (best) | val top-1 |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['head_type']} | {r['seconds']:.2f} | {r['epochs']} ({r['best']}) "
            f"| {r['val_top1']:.3f} |"
        )
    lines.append("")
    if e2e is not None:
        lines += [
            "## End to end: POST /v1/jobs -> usable head, 1,000 images (float head)",
            "",
            "Real extractor process (default checkpoint), API over ASGI on SQLite, one worker "
            "thread. `total` runs from the POST until a prediction with the new version answered "
            "200; `train` is `train_head` alone (metrics.train_seconds).",
            "",
            "| run | total (s) | train (s) | val top-1 |",
            "|---|---:|---:|---:|",
            f"| cold: job computes 1,000 features | {e2e['cold_total_s']:.1f} | "
            f"{e2e['cold_train_s']:.2f} | {e2e['cold_val_top1']:.3f} |",
            f"| warm: features cached | {e2e['warm_total_s']:.1f} | {e2e['warm_train_s']:.2f} | "
            f"{e2e['warm_val_top1']:.3f} |",
            "",
            f"Uploading the 1,000 PNGs (64x64) took {e2e['upload_s']:.1f} s.",
            "",
        ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
