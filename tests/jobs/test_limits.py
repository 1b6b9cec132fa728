"""Jobs cannot hold a worker for ever or leak internals (docs/threats.md, "Caps per tenant"
and "What one tenant learns about others, and about the service"): bounded epochs, a wall clock
per attempt, caps on labels and heads, and `error` as a code and a sentence of ours."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.db import session_scope
from service.jobs import worker as worker_module
from service.jobs.tables import Job
from service.jobs.worker import Worker
from service.settings import Settings
from tests.conftest import make_settings
from tests.jobs.conftest import FAST_QUEUE, QUICK
from tests.jobs.helpers import FakeExtractor, add_job, job_row, seed_dataset, versions_of_job

MAX_LABELS = 3
MAX_HEADS = 2


@pytest.fixture(scope="module")
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(
        tmp_path_factory.mktemp("data"),
        db_url,
        **FAST_QUEUE,
        max_labels_per_dataset=MAX_LABELS,
        max_heads_per_tenant=MAX_HEADS,
        job_max_epochs=500,
    )


@pytest.fixture
def factory(client: TestClient):  # type: ignore[no-untyped-def]
    return client.app.state.sessionmaker  # type: ignore[attr-defined]


def make_worker(client: TestClient, extractor: object = None, **over: object) -> Worker:
    app = client.app
    return Worker(
        app.state.settings.model_copy(update=over),  # type: ignore[attr-defined]
        session_factory=app.state.sessionmaker,  # type: ignore[attr-defined]
        extractor=extractor or FakeExtractor(),
        blobs=app.state.blobs,  # type: ignore[attr-defined]
        name=f"limits-{time.monotonic_ns()}",
    )


def drain(factory) -> None:  # type: ignore[no-untyped-def]
    with session_scope(factory) as s:
        s.execute(
            update(Job)
            .where(Job.status.in_(["queued", "running"]))
            .values(status="cancelled", lease_expires_at=None)
        )


def test_epochs_past_the_bound_are_refused_at_enqueue(client: TestClient, make_tenant) -> None:
    t = make_tenant("ep")
    ds = seed_dataset(client.app.state.sessionmaker, t.id)  # type: ignore[attr-defined]
    body = {"dataset_id": ds, "head": "h", "head_type": "binary"}
    r = client.post(
        "/v1/jobs",
        json=body | {"params": {"epochs": 100_000, "patience": 0}},
        headers=t.owner_headers,
    )
    assert r.status_code == 422 and r.json()["code"] == "invalid_params", r.text
    assert "500" in r.json()["detail"]
    ok = client.post("/v1/jobs", json=body | {"params": {"epochs": 500}}, headers=t.owner_headers)
    assert ok.status_code == 202, ok.text


def test_a_job_past_its_wall_clock_fails_and_is_not_retried(
    client: TestClient, factory, make_tenant, slow_epochs
) -> None:
    """`epochs=10000, patience=0` with slow epochs would train for minutes: it is stopped at
    the limit, fails `job_timeout`, and the worker is free again."""
    t = make_tenant("wall")
    ds = seed_dataset(factory, t.id)
    drain(factory)
    slow_epochs(0.02)
    job_id = add_job(factory, t.id, ds, params={"epochs": 10_000, "patience": 0, "solver": "adam"})
    worker = make_worker(client, job_max_runtime_s=1.5)
    start = time.monotonic()
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    took = time.monotonic() - start
    job = job_row(factory, job_id)
    assert job.status == "failed" and job.attempt == 1, (job.status, job.error)
    assert (job.error or "").startswith("job_timeout: "), job.error
    assert versions_of_job(factory, job_id) == 0
    assert worker.run_once() is False  # not queued again
    assert took < 45, took


def test_job_errors_are_a_code_and_our_sentence_never_the_exception_text(
    client: TestClient, factory, make_tenant
) -> None:
    t = make_tenant("err")
    ds = seed_dataset(factory, t.id)
    drain(factory)
    job_id = add_job(factory, t.id, ds, params=QUICK, max_attempts=1)
    secret = "could not connect to postgresql://headhub:s3cret@10.1.2.3:5432/headhub"
    assert make_worker(client, FakeExtractor(fail=RuntimeError(secret))).run_once()
    job = job_row(factory, job_id)
    assert job.status == "failed"
    assert (job.error or "").startswith("internal_error: "), job.error
    assert "s3cret" not in (job.error or "") and "10.1.2.3" not in (job.error or "")
    api = client.get(f"/v1/jobs/{job_id}", headers=t.owner_headers).json()
    assert api["error"] == job.error


def test_labels_past_the_cap_are_refused_by_the_api_and_by_the_worker(
    client: TestClient, factory, make_tenant
) -> None:
    t = make_tenant("lab")
    ds = seed_dataset(factory, t.id, labels=("a", "b", "c", "d"), per_label=4)
    r = client.post(
        "/v1/jobs",
        json={"dataset_id": ds, "head": "h", "head_type": "float"},
        headers=t.owner_headers,
    )
    assert r.status_code == 422 and r.json()["code"] == "too_many_labels", r.text
    drain(factory)
    job_id = add_job(factory, t.id, ds, params=QUICK)  # queued before the cap was lowered
    assert make_worker(client).run_once()
    job = job_row(factory, job_id)
    assert job.status == "failed" and job.attempt == 1
    assert (job.error or "").startswith("too_many_labels: "), job.error


def test_heads_per_tenant_are_capped(client: TestClient, factory, make_tenant) -> None:
    t = make_tenant("heads")
    ds = seed_dataset(factory, t.id)
    drain(factory)
    for head in ("one", "two"):
        job_id = add_job(factory, t.id, ds, head=head, params=QUICK)
        assert make_worker(client).run_once()
        assert job_row(factory, job_id).status == "succeeded"
    body = {"dataset_id": ds, "head_type": "float", "params": QUICK}
    r = client.post("/v1/jobs", json=body | {"head": "three"}, headers=t.owner_headers)
    assert r.status_code == 409 and r.json()["code"] == "head_quota_exceeded", r.text
    again = client.post("/v1/jobs", json=body | {"head": "two"}, headers=t.owner_headers)
    assert again.status_code == 202, again.text  # a new version of a head it has
    drain(factory)
    job_id = add_job(factory, t.id, ds, head="three", params=QUICK)  # past the API's check
    assert make_worker(client).run_once()
    job = job_row(factory, job_id)
    assert job.status == "failed" and (job.error or "").startswith("head_quota_exceeded: ")


def test_heads_per_tenant_are_capped_when_workers_register_in_parallel(
    client: TestClient, factory, make_tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight workers finish eight jobs for eight new heads at once: the count and the new head
    are serialised by the tenant's lock (on PostgreSQL; SQLite's `BEGIN IMMEDIATE` serialises
    every writer), so exactly the cap registers and the others fail `head_quota_exceeded`
    (the 409 the API answers), not retried."""
    t = make_tenant("heads-race")
    ds = seed_dataset(factory, t.id)
    drain(factory)
    jobs = [add_job(factory, t.id, ds, head=f"h{i}", params=QUICK) for i in range(8)]
    workers = [make_worker(client) for _ in jobs]
    # The trainings end together (no transaction is open then), so the registrations race.
    trained_together = threading.Barrier(len(workers))
    train = worker_module.train_head

    def train_then_wait(*args: object, **kwargs: object) -> object:
        trained = train(*args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            trained_together.wait(timeout=120)  # broken only if a worker failed before it
        return trained

    monkeypatch.setattr(worker_module, "train_head", train_then_wait)
    with ThreadPoolExecutor(len(workers)) as pool:
        ran = list(pool.map(lambda w: w.run_once(), workers))
    assert all(ran), ran
    rows = [job_row(factory, job_id) for job_id in jobs]
    succeeded = [j for j in rows if j.status == "succeeded"]
    assert len(succeeded) == MAX_HEADS, [(j.status, j.error) for j in rows]
    refused = [j for j in rows if j.status != "succeeded"]
    for job in refused:
        assert job.status == "failed" and job.attempt == 1, (job.status, job.error)
        assert (job.error or "").startswith("head_quota_exceeded: "), job.error
    assert sum(versions_of_job(factory, j.id) for j in refused) == 0
    listed = client.get("/v1/heads", headers=t.owner_headers).json()["items"]
    assert len(listed) == MAX_HEADS, listed
