"""A tenant's whole journey through real processes, on SQLite and on PostgreSQL.

An extractor process (`headhub extractor serve`, tiny checkpoint), the API (real ASGI) and a
`headhub worker` subprocess share one database and blob directory through the same `HEADHUB_*`
settings. Tenant A uploads coloured shapes as files and as a zip, trains a float, a binary and
an mlp head, watches progress, pins `production`, predicts with all three heads in one call,
publishes one, and tenant B finds it in the marketplace and predicts with it. The exported ONNX
file scores features exactly like the service does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import TenantCreds, create_tenant, make_settings
from tests.fixtures.processes import settings_env, start_headhub
from tests.integration.shapes import CLASSES, shape_set, zip_by_label

pytestmark = pytest.mark.slow

QUEUE: dict[str, Any] = {
    "job_lease_s": 10.0,
    "job_heartbeat_s": 0.2,
    "job_backoff_base_s": 0.5,
    "worker_poll_s": 0.1,
    "worker_grace_s": 2.0,
}
# Small but real training runs: a few dozen epochs over ~48 training vectors.
PARAMS = {
    "float": {"epochs": 60, "patience": 0, "lr": 0.05},
    "binary": {"epochs": 60, "patience": 0, "lr": 0.05},
    "mlp": {"epochs": 60, "patience": 0, "lr": 0.01, "hidden": 32},
}
PER_CLASS = 20
LABELS = sorted(CLASSES)


@pytest.fixture(scope="module")
def settings(
    db_url: str, tmp_path_factory: pytest.TempPathFactory, extractor_process: str
) -> Settings:
    return make_settings(
        tmp_path_factory.mktemp("data"),
        db_url,
        extractor_urls=[extractor_process],
        extractor_timeout_s=10.0,  # the default: the worker process shares a busy machine
        **QUEUE,
    )


@pytest.fixture(scope="module")
def worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A `headhub worker` subprocess on the same settings, as production passes them; yields its
    log file."""
    env = settings_env(settings) | {"HEADHUB_LOG_FORMAT": "text"}
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = start_headhub("worker", log_path=log, env=env)
    try:
        yield log
    finally:
        proc.stop(grace_s=15)


def upload(client: TestClient, a: TenantCreds) -> str:
    """Two labels as `files` parts, the third as a zip; returns the dataset id."""
    r = client.post("/v1/datasets", json={"name": "shapes"}, headers=a.owner_headers)
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    images = shape_set(PER_CLASS)
    for label in ("circle", "square"):
        files = [
            ("files", (f"{label}-{i}.png", png, "image/png")) for i, png in enumerate(images[label])
        ]
        r = client.post(
            f"/v1/datasets/{ds}/images", data={"label": label}, files=files, headers=a.owner_headers
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"added": PER_CLASS, "duplicates": 0, "rejected": []}
    archive = zip_by_label({"triangle": images["triangle"], "circle": images["circle"][:3]})
    r = client.post(
        f"/v1/datasets/{ds}/images",
        files={"archive": ("shapes.zip", archive, "application/zip")},
        headers=a.owner_headers,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"added": PER_CLASS, "duplicates": 3, "rejected": []}
    return str(ds)


def wait_for_jobs(
    client: TestClient, a: TenantCreds, jobs: dict[str, str], timeout: float
) -> dict[str, list[dict[str, Any]]]:
    """Poll every job until all have finished; returns each job's observed states."""
    seen: dict[str, list[dict[str, Any]]] = {t: [] for t in jobs}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for head_type, job_id in jobs.items():
            r = client.get(f"/v1/jobs/{job_id}", headers=a.owner_headers)
            assert r.status_code == 200, r.text
            seen[head_type].append(r.json())
        if all(s[-1]["status"] in {"succeeded", "failed", "cancelled"} for s in seen.values()):
            return seen
        time.sleep(0.2)
    raise AssertionError(
        f"jobs not finished in {timeout}s: { {t: s[-1] for t, s in seen.items()} }"
    )


def test_tenant_journey_from_upload_to_marketplace(
    client: TestClient, worker: Path, extractor_process: str
) -> None:
    started = time.monotonic()
    a, b = create_tenant(client, "journey-a"), create_tenant(client, "journey-b")
    extractor = httpx.get(f"{extractor_process}/v1/info", timeout=10).json()
    served = client.get("/v1/extractor", headers=a.predict_headers)
    assert served.status_code == 200, served.text
    fields = ("id", "architecture", "input_size", "feature_dim", "parameters", "size_bytes")
    assert {k: served.json()[k] for k in fields} == {k: extractor[k] for k in fields}

    ds = upload(client, a)
    got = client.get(f"/v1/datasets/{ds}", headers=a.owner_headers).json()
    assert got["image_count"] == 3 * PER_CLASS
    assert got["label_counts"] == {label: PER_CLASS for label in LABELS}

    jobs = {}
    for head_type, params in PARAMS.items():
        body = {"dataset_id": ds, "head": f"shapes-{head_type}", "head_type": head_type}
        r = client.post(
            "/v1/jobs",
            json=body | {"params": params, "seed": 1},
            headers=a.owner_headers | {"Idempotency-Key": f"journey-{head_type}"},
        )
        assert r.status_code == 202 and r.json()["status"] == "queued", r.text
        jobs[head_type] = r.json()["id"]

    seen = wait_for_jobs(client, a, jobs, timeout=150)
    for head_type, states in seen.items():
        job = states[-1]
        assert job["status"] == "succeeded", (job, worker.read_text()[-3000:])
        progress = [s["progress"] for s in states]
        assert progress == sorted(progress) and progress[-1] == 1.0
        assert job["attempt"] == 1
        assert job["head_version"] == {"ref": f"{a.name}/shapes-{head_type}:1"}
        m = job["metrics"]
        assert set(m["per_class"]) == set(LABELS)
        assert 0.0 <= m["val_top1"] <= m["val_top5"] <= 1.0 and m["train_loss"] >= 0.0
        assert m["history"], m
        v = client.get(
            f"/v1/heads/{a.name}/shapes-{head_type}/versions/1", headers=a.owner_headers
        ).json()
        assert v["head_type"] == head_type and sorted(v["labels"]) == LABELS
        assert v["extractor_id"] == extractor["id"]
        assert v["job_id"] == jobs[head_type] and v["dataset_id"] == ds
        r = client.put(
            f"/v1/heads/{a.name}/shapes-{head_type}/aliases/production",
            json={"version": 1},
            headers=a.owner_headers,
        )
        assert r.status_code == 200, r.text

    # One call, three heads, three ways to name them; unseen images of each class.
    fresh = shape_set(2, start=1000)
    refs = ["shapes-float", f"{a.name}/shapes-binary@production", "shapes-mlp:1"]
    files = [
        ("files", (f"{lab}-{i}.png", png, "image/png"))
        for lab in LABELS
        for i, png in enumerate(fresh[lab])
    ]
    r = client.post(
        "/v1/predict",
        params={"heads": ",".join(refs), "top_k": 3},
        files=files,
        headers=a.predict_headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["extractor_id"] == extractor["id"] and len(body["results"]) == len(files)
    resolved = {f"{a.name}/shapes-{t}:1" for t in PARAMS}
    correct = 0
    for result in body["results"]:
        assert set(result["predictions"]) == resolved
        for preds in result["predictions"].values():
            scores = [p["score"] for p in preds]
            assert sorted(p["label"] for p in preds) == LABELS
            assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4
            correct += preds[0]["label"] == result["filename"].split("-")[0]
    assert correct > len(files) * len(refs) / len(LABELS), body  # better than chance

    # Publish; B finds it in the marketplace and predicts with it; B cannot see the others.
    r = client.patch(
        f"/v1/heads/{a.name}/shapes-float",
        json={"visibility": "public", "description": "Circles, squares and triangles."},
        headers=a.owner_headers,
    )
    assert r.status_code == 200, r.text
    market = client.get("/v1/marketplace", params={"q": "shapes"}, headers=b.owner_headers).json()
    cards = {c["ref"]: c for c in market["items"]}
    assert set(cards) == {f"{a.name}/shapes-float"}
    card = cards[f"{a.name}/shapes-float"]
    assert sorted(card["labels"]) == LABELS and card["versions"] == [1]
    used = card["usage_count"]
    r = client.post(
        "/v1/predict",
        params={"heads": card["ref"]},
        files=files[:2],
        headers=b.predict_headers,
    )
    assert r.status_code == 200, r.text
    assert list(r.json()["results"][0]["predictions"]) == [f"{a.name}/shapes-float:1"]
    again = client.get("/v1/marketplace", params={"q": "shapes"}, headers=b.owner_headers).json()
    assert again["items"][0]["usage_count"] == used + 2
    hidden = client.post(
        "/v1/predict",
        params={"heads": f"{a.name}/shapes-mlp"},
        files=files[:1],
        headers=b.predict_headers,
    )
    assert hidden.status_code == 404

    # Export: the ONNX file carries its metadata and scores features like the service.
    x = np.random.default_rng(0).normal(size=(4, extractor["feature_dim"])).astype(np.float32)
    for head_type in PARAMS:
        ref = f"{a.name}/shapes-{head_type}"
        r = client.get(
            f"/v1/heads/{ref}/versions/1/export", params={"format": "onnx"}, headers=a.owner_headers
        )
        assert r.status_code == 200, r.text
        meta = {p.key: p.value for p in onnx.load_from_string(r.content).metadata_props}
        assert meta["extractor_id"] == extractor["id"] and meta["head_type"] == head_type
        session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
        onnx_scores = session.run(None, {"features": x})[0]
        served = client.post(
            "/v1/predict/features",
            json={
                "extractor_id": extractor["id"],
                "heads": [ref],
                "top_k": 3,
                "features": x.tolist(),
            },
            headers=a.predict_headers,
        )
        assert served.status_code == 200, served.text
        labels = json.loads(meta["labels"])
        for row, result in zip(onnx_scores, served.json()["results"], strict=True):
            by_label = {p["label"]: p["score"] for p in result["predictions"][f"{ref}:1"]}
            assert np.allclose([by_label[lab] for lab in labels], row, atol=1e-4)
    print(f"journey took {time.monotonic() - started:.1f}s")
