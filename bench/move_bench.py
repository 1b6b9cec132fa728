"""Moving a head to a new extractor against retraining it from scratch on the old one.

A head trained on 1,000 images on the shipped extractor (OLD) is moved to a second extractor of
the same architecture (NEW, `headhub extractor random-init`: the same network cost, other
weights) by the real worker code: featurize the 1,000 images on NEW, retrain with the same
recipe, score both versions on the same split. The baseline trains the same head from scratch on
OLD: its feature cache emptied first, so it featurizes the 1,000 images too. Both run through the
API (SQLite, ASGI) and an in-process worker against one real `headhub extractor serve` process
serving both networks; runs alternate, so load on a shared machine hits both alike.

    .venv/bin/python -m bench.move_bench [--images 1000] [--rounds 3]

Writes bench/results/move.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from pydantic import SecretStr
from sqlalchemy import delete, select

from bench.training_bench import _png

RESULTS = Path(__file__).resolve().parent / "results" / "move.md"
ADMIN = "bench-admin-key-" + "x" * 32
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def start_extractor(root: Path, directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`headhub extractor serve` with the shipped default and `directory`, ready."""
    from tests.fixtures.processes import free_port

    port = free_port()
    log = (root / "extractor.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.commands.cli", "extractor", "serve", "--port", str(port),
         "--checkpoint-dir", str(directory)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"extractor did not become ready:\n{(root / 'extractor.log').read_text()}")


def run_job(worker: Any, client: Any, job_id: str) -> dict[str, Any]:
    """Claim and execute the one queued job; its wall time and what it recorded."""
    t0 = time.perf_counter()
    claimed = worker.claim("bench:0")
    assert claimed is not None and claimed.id == job_id, "another job was claimed"
    worker.execute(claimed)
    seconds = time.perf_counter() - t0
    state = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    if state["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {state['status']}: {state['error']}")
    return {"seconds": seconds, "metrics": state["metrics"], "ref": state["head_version"]["ref"]}


def forget_features(factory: Any, extractor_id: str) -> int:
    """Empty the feature cache of one extractor (and the tenants' records of having filled it),
    as if that extractor had never seen the images."""
    from service.datasets.tables import Feature, TenantFeature
    from service.db import session_scope

    with session_scope(factory) as s:
        query = select(Feature.image_sha256).where(Feature.extractor_id == extractor_id)
        n = len(list(s.scalars(query)))
        s.execute(delete(Feature).where(Feature.extractor_id == extractor_id))
        s.execute(delete(TenantFeature).where(TenantFeature.extractor_id == extractor_id))
    return n


def bench(n_images: int, rounds: int, head_type: str) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from extractor.calibration import write_random_init
    from extractor.catalog import install_checkpoint
    from extractor.checkpoint import DEFAULT_CHECKPOINT, checkpoint_id
    from service.app import create_app
    from service.db import migrate
    from service.jobs.worker import Worker
    from service.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="move-bench-"))
    try:
        directory = root / "extractors"
        new_id = install_checkpoint(_random_init(root, write_random_init), directory)
        old_id = checkpoint_id(DEFAULT_CHECKPOINT.read_bytes())
        proc, url = start_extractor(root, directory)
        try:
            settings = Settings(
                data_dir=root, admin_key=SecretStr(ADMIN), extractor_urls=[url],
                featurize_on_upload=False, extractor_timeout_s=120, rate_limit_per_minute=0,
                rate_limit_tenant_per_minute=0, rate_limit_address_per_minute=0,
            )  # fmt: skip
            migrate(settings.database_url)
            app = create_app(settings)
            with TestClient(app, raise_server_exceptions=True) as client:
                return _rounds(client, app, settings, Worker, old_id, new_id, n_images, rounds,
                               head_type)  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _random_init(root: Path, write: Any) -> Path:
    path = root / "random-init.safetensors"
    write(path, seed=1)
    return path


def _rounds(
    client: Any,
    app: Any,
    settings: Any,
    worker_cls: Any,
    old_id: str,
    new_id: str,
    n_images: int,
    rounds: int,
    head_type: str,
) -> dict[str, Any]:
    r = client.post("/v1/extractors", json={"id": new_id, "note": "bench: random-init"},
                    headers=AUTH)  # fmt: skip
    r.raise_for_status()
    client.post("/v1/tenants", json={"name": "bench"}, headers=AUTH).raise_for_status()
    ds = client.post("/v1/datasets?tenant=bench", json={"name": "bench"}, headers=AUTH).json()
    labels, per_label = 10, n_images // 10
    t0 = time.perf_counter()
    for label in range(labels):
        files = [("files", (f"{i}.png", _png(label, i), "image/png")) for i in range(per_label)]
        for start in range(0, per_label, 100):
            client.post(
                f"/v1/datasets/{ds['id']}/images", data={"label": f"label-{label}"},
                files=files[start : start + 100], headers=AUTH,
            ).raise_for_status()  # fmt: skip
    upload_s = time.perf_counter() - t0
    worker = worker_cls(settings, session_factory=app.state.sessionmaker, blobs=app.state.blobs)
    factory = app.state.sessionmaker

    def train(head: str, extractor_id: str) -> str:
        body = {"dataset_id": ds["id"], "head": head, "head_type": head_type,
                "extractor_id": extractor_id}  # fmt: skip
        return str(client.post("/v1/jobs", json=body, headers=AUTH).json()["id"])

    def move() -> str:
        body = {"extractor_id": new_id, "from_version": 1}
        return str(client.post("/v1/heads/bench/head/moves", json=body, headers=AUTH).json()["id"])

    first = run_job(worker, client, train("head", old_id))  # version 1 on OLD; caches OLD
    runs: dict[str, list[dict[str, Any]]] = {"retrain": [], "move": [], "move_cached": []}
    for i in range(rounds):
        order = ["retrain", "move"] if i % 2 == 0 else ["move", "retrain"]
        for what in order:
            if what == "retrain":
                forgotten = forget_features(factory, old_id)
                result = run_job(worker, client, train("scratch", old_id))
            else:
                forgotten = forget_features(factory, new_id)
                result = run_job(worker, client, move())
            runs[what].append(result | {"featurized": forgotten})
        # the same move once the NEW features are cached (uploads after the default changed)
        runs["move_cached"].append(run_job(worker, client, move()) | {"featurized": 0})
    return {
        "upload_s": upload_s,
        "first": first,
        "runs": runs,
        "old_id": old_id,
        "new_id": new_id,
        "n_images": per_label * labels,
    }


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows)


def report(result: dict[str, Any], head_type: str, rounds: int, loads: tuple[float, float]) -> str:
    runs = result["runs"]
    retrain = median(runs["retrain"], "seconds")
    moved = median(runs["move"], "seconds")
    cached = median(runs["move_cached"], "seconds")
    train_s = {
        k: statistics.median(r["metrics"]["train_seconds"] for r in v) for k, v in runs.items()
    }
    side = runs["move"][-1]["metrics"]["move"]
    each = {k: ", ".join(f"{r['seconds']:.1f}" for r in v) for k, v in runs.items()}
    # featurizing, scoring and registering: what is not `train_head`
    rest = {
        k: statistics.median(r["seconds"] - r["metrics"]["train_seconds"] for r in v)
        for k, v in runs.items()
    }
    verdict = (
        "not lower, so `promote_if_not_worse` would have moved `production`"
        if side["not_worse"]
        else "lower, so `promote_if_not_worse` would have kept `production` where it was"
    )
    new_version = runs["move"][-1]["ref"].rsplit(":", 1)[1]
    fr, to = side["from"], side["to"]
    cmd = ".venv/bin/python -m bench.move_bench " + " ".join(sys.argv[1:])
    n = result["n_images"]
    lines = [
        "# Moving a head to a new extractor vs retraining it from scratch",
        "",
        f"Command: `{cmd.strip()}`",
        f"Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"torch {torch.__version__}, 1-min load average {loads[0]:.1f} at the start, "
        f"{loads[1]:.1f} at the end (shared machine: compare rows, not files)",
        "",
        f"A {head_type} head on {n:,} images (10 labels, 64x64 PNGs), its features cached on the "
        f"shipped extractor OLD (`{result['old_id'][:12]}`). NEW (`{result['new_id'][:12]}`) is "
        "`headhub extractor random-init --seed 1`: the same architecture, so the same cost per "
        "image. One `headhub extractor serve` serves both; the API (ASGI, SQLite) queues the "
        "jobs and an in-process worker runs them (`Worker.claim` + `Worker.execute`: "
        "featurize, train, score, register). Median of "
        f"{rounds} alternating rounds; `train` is `train_head` alone (metrics.train_seconds).",
        "",
        "| job | features computed | wall (s), median | train (s) | wall - train (s) "
        "| each round (s) |",
        "|---|---:|---:|---:|---:|---|",
        f"| retrain from scratch on OLD (OLD cache emptied first) | {n:,} | {retrain:.1f} | "
        f"{train_s['retrain']:.2f} | {rest['retrain']:.1f} | {each['retrain']} |",
        f"| **move** to NEW (NEW cache empty) | {n:,} | **{moved:.1f}** | "
        f"{train_s['move']:.2f} | {rest['move']:.1f} | {each['move']} |",
        f"| move to NEW, NEW features already cached | 0 | {cached:.1f} | "
        f"{train_s['move_cached']:.2f} | {rest['move_cached']:.1f} | {each['move_cached']} |",
        "",
        f"**Move / retrain: {moved / retrain:.2f}** (wall time, medians). A move does what a "
        "retrain does (each image through one extractor once, one `train_head`) plus what the "
        "cached move's `wall - train` shows: loading both extractors' cached features, scoring "
        "the old version on the validation split, aliases and registration, "
        f"{rest['move_cached']:.1f} s. "
        "`train_head` itself differs with the features it is given (the float head's L-BFGS "
        f"and cross-validation converge in fewer or more iterations: {train_s['move']:.1f} s "
        f"on NEW's, {train_s['retrain']:.1f} s on OLD's here); without it the move's "
        f"featurizing and the rest come to {rest['move'] / rest['retrain']:.2f} of the "
        "retrain's. With the new extractor's features already cached (the background "
        "featurizer fills them for uploads once NEW is the default) a move costs "
        f"{cached / retrain:.2f} of a retrain. Raw numbers: `move.json` beside this file.",
        "",
        "The last move's side-by-side metrics, as the new version's `metrics.move` holds "
        f"them (same validation split; the new version's top-1 is {verdict}):",
        "",
        "| | version | extractor | val top-1 | val top-5 | validation images |",
        "|---|---:|---|---:|---:|---:|",
        f"| from | {fr['version']} | `{fr['extractor_id'][:12]}` | {fr['val_top1']:.3f} | "
        f"{fr['val_top5']:.3f} | {fr['n_val']} |",
        f"| to | {new_version} | `{to['extractor_id'][:12]}` | {to['val_top1']:.3f} | "
        f"{to['val_top5']:.3f} | {to['n_val']} |",
        "",
        f"Uploading the {n:,} images took {result['upload_s']:.1f} s; the first training on OLD "
        f"(features computed) {result['first']['seconds']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


def slim(result: dict[str, Any]) -> dict[str, Any]:
    """What the results file is made of, per run: times, what was featurized, the move's metrics."""

    def run(r: dict[str, Any]) -> dict[str, Any]:
        m = r["metrics"]
        out = {
            "seconds": round(r["seconds"], 3),
            "train_seconds": m["train_seconds"],
            "featurized": r.get("featurized"),
            "ref": r["ref"],
            "val_top1": m.get("val_top1"),
        }
        return out | ({"move": m["move"]} if "move" in m else {})

    runs = {k: [run(r) for r in v] for k, v in result["runs"].items()}
    return result | {"first": run(result["first"]), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--head-type", default="float", choices=["float", "binary", "mlp"])
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `headhub worker` trains (HEADHUB_WORKER_TORCH_THREADS)
    before = os.getloadavg()[0]
    result = bench(args.images, args.rounds, args.head_type)
    text = report(result, args.head_type, args.rounds, (before, os.getloadavg()[0]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    RESULTS.with_suffix(".json").write_text(json.dumps(slim(result), indent=1) + "\n")
    print(text)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
