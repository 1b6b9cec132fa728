"""The queue's guarantees with in-process workers: exclusive claims, leases and fencing,
retries with backoff, fairness, cancel and shutdown (docs/architecture.md,
"The job queue under failure")."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from extractor.client import ExtractorUnavailable
from service.db import as_utc, session_scope, utcnow
from service.heads.evaluate import logits
from service.heads.headfile import decode_head
from service.jobs import repository as repo
from service.jobs.tables import Job, JobStatus
from service.jobs.worker import Worker
from tests.jobs.helpers import (
    FakeExtractor,
    add_job,
    job_row,
    seed_dataset,
    versions_of_job,
    wait_for,
)


@pytest.fixture
def factory(client: TestClient):  # type: ignore[no-untyped-def]
    return client.app.state.sessionmaker  # type: ignore[attr-defined]


@pytest.fixture
def tenant(client, make_tenant):  # type: ignore[no-untyped-def]
    creds = make_tenant("q")
    return creds, seed_dataset(client.app.state.sessionmaker, creds.id)


def make_worker(client: TestClient, **settings_over: object) -> Worker:
    app = client.app
    settings = app.state.settings.model_copy(update=settings_over)  # type: ignore[attr-defined]
    return Worker(
        settings,
        session_factory=app.state.sessionmaker,  # type: ignore[attr-defined]
        extractor=FakeExtractor(),
        blobs=app.state.blobs,  # type: ignore[attr-defined]
        name=f"test-{id(settings)}",
    )


def drain(factory) -> None:  # type: ignore[no-untyped-def]
    """End whatever earlier tests left queued or running, so each test sees only its own jobs."""
    with session_scope(factory) as s:
        s.execute(
            update(Job)
            .where(Job.status.in_(["queued", "running"]))
            .values(status="cancelled", lease_expires_at=None)
        )


@pytest.mark.parametrize("head_type", ["float", "binary", "mlp"])
def test_worker_trains_registers_one_usable_version_and_reports_metrics(
    client, factory, tenant, head_type
) -> None:
    creds, ds = tenant
    drain(factory)
    job_id = add_job(factory, creds.id, ds, head=f"h-{head_type}", head_type=head_type)
    assert make_worker(client).run_once() is True
    job = client.get(f"/v1/jobs/{job_id}", headers=creds.owner_headers).json()
    assert job["status"] == "succeeded" and job["attempt"] == 1 and job["progress"] == 1.0
    assert job["head_version"] == {"ref": f"{creds.name}/h-{head_type}:1"}
    assert job["metrics"]["val_top1"] == 1.0 and job["metrics"]["history"]
    assert versions_of_job(factory, job_id) == 1
    v = client.get(f"/v1/heads/{creds.name}/h-{head_type}/versions/1", headers=creds.owner_headers)
    assert v.status_code == 200 and v.json()["head_type"] == head_type
    assert v.json()["job_id"] == job_id and v.json()["labels"] == ["cat", "dog"]
    blob = client.get(
        f"/v1/heads/{creds.name}/h-{head_type}/versions/1/export",
        params={"format": "safetensors"},
        headers=creds.owner_headers,
    )
    head = decode_head(blob.content)
    with session_scope(factory) as s:
        from service.datasets.features import load_features

        floats, bits, labels, _ = load_features(s, ds, head.extractor_id)
    pred = logits(head, floats, bits).argmax(1)
    assert (np.array(head.labels)[pred] == np.array(labels)).all()


def test_racing_claimers_take_each_job_exactly_once(factory, tenant) -> None:
    creds, ds = tenant
    drain(factory)
    ids = {add_job(factory, creds.id, ds) for _ in range(16)}
    claimed: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def claimer(n: int) -> None:
        barrier.wait()
        while True:
            with session_scope(factory) as s:
                job = repo.claim(s, worker_id=f"w{n}", now=utcnow(), lease_s=60)
                if job is None:
                    return
                job_id, attempt = job.id, job.attempt
            with lock:
                claimed.append(job_id)
            with session_scope(factory) as s:
                assert repo.finish(s, job_id, attempt, status=JobStatus.succeeded.value)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(claimed) == Counter(ids)


def test_an_expired_lease_is_claimed_again_and_the_late_completion_is_fenced_out(
    factory, tenant
) -> None:
    creds, ds = tenant
    drain(factory)
    job_id = add_job(factory, creds.id, ds)
    with session_scope(factory) as s:
        first = repo.claim(s, worker_id="slow", now=utcnow(), lease_s=0.01)
        assert first is not None and first.attempt == 1
    later = utcnow() + timedelta(seconds=1)
    with session_scope(factory) as s:
        assert repo.claim(s, worker_id="fast", now=later, lease_s=60) is None  # still running
        assert repo.reap_expired(s, now=later) == 1
    with session_scope(factory) as s:
        second = repo.claim(s, worker_id="fast", now=later, lease_s=60)
        assert second is not None and second.id == job_id and second.attempt == 2
    with session_scope(factory) as s:
        hb = repo.heartbeat(s, job_id, 1, now=later, lease_s=60, progress=0.5, metrics=None)
        assert hb is None  # the old attempt learns it lost the lease
        assert not repo.finish(s, job_id, 1, status=JobStatus.succeeded.value, error="late")
        assert repo.finish(s, job_id, 2, status=JobStatus.succeeded.value)
    job = job_row(factory, job_id)
    assert job.status == "succeeded" and job.attempt == 2 and job.error != "late"


def test_an_expired_lease_on_the_last_attempt_fails_the_job(factory, tenant) -> None:
    creds, ds = tenant
    drain(factory)
    job_id = add_job(factory, creds.id, ds, max_attempts=1)
    with session_scope(factory) as s:
        assert repo.claim(s, worker_id="dies", now=utcnow(), lease_s=0.01) is not None
    with session_scope(factory) as s:
        repo.reap_expired(s, now=utcnow() + timedelta(seconds=1))
    job = job_row(factory, job_id)
    assert job.status == "failed" and "lease expired" in (job.error or "")


def test_a_failing_job_is_retried_with_growing_backoff_then_failed(client, factory, tenant) -> None:
    creds, ds = tenant
    drain(factory)
    job_id = add_job(factory, creds.id, ds, max_attempts=3)
    worker = make_worker(client)
    worker.extractor = FakeExtractor(fail=ExtractorUnavailable("extractor timed out"))
    for attempt, backoff in ((1, 0.2), (2, 0.4), (3, None)):
        wait_for(lambda: worker.run_once(), timeout=10, every=0.02)
        returned = utcnow()
        job = job_row(factory, job_id)
        assert job.attempt == attempt and (job.error or "").startswith("extractor_unavailable: ")
        if backoff is None:
            break
        assert job.status == "queued"
        # the failure happened between the claim (started_at) and run_once returning
        run_after = as_utc(job.run_after)
        assert (run_after - returned).total_seconds() <= backoff
        assert (run_after - as_utc(job.started_at)).total_seconds() >= backoff
    assert job.status == "failed" and job.finished_at is not None
    assert versions_of_job(factory, job_id) == 0


def test_a_job_whose_dataset_is_gone_fails_at_once_without_retries(client, factory, tenant) -> None:
    creds, _ = tenant
    drain(factory)
    job_id = add_job(factory, creds.id, "0" * 32)
    assert make_worker(client).run_once()
    job = job_row(factory, job_id)
    assert job.status == "failed" and job.attempt == 1 and "no longer exists" in (job.error or "")


def test_tenants_take_turns_so_a_flood_does_not_starve_others(factory, client, make_tenant) -> None:
    drain(factory)
    a, b = make_tenant("flood"), make_tenant("small")
    ds_a, ds_b = seed_dataset(factory, a.id), seed_dataset(factory, b.id)
    for _ in range(6):
        add_job(factory, a.id, ds_a)
    for _ in range(2):
        add_job(factory, b.id, ds_b)
    order = []
    now = utcnow()
    for i in range(8):
        with session_scope(factory) as s:
            job = repo.claim(s, worker_id="w", now=now + timedelta(milliseconds=i), lease_s=60)
            assert job is not None
            order.append("a" if job.tenant_id == a.id else "b")
            repo.finish(s, job.id, job.attempt, status=JobStatus.succeeded.value)
    assert order == ["a", "b", "a", "b", "a", "a", "a", "a"]


def test_a_tenant_with_a_running_job_yields_to_an_idle_tenant(factory, make_tenant) -> None:
    drain(factory)
    a, b = make_tenant("busy"), make_tenant("idle")
    ds_a, ds_b = seed_dataset(factory, a.id), seed_dataset(factory, b.id)
    for _ in range(3):
        add_job(factory, a.id, ds_a)
    with session_scope(factory) as s:
        assert repo.claim(s, worker_id="w1", now=utcnow(), lease_s=60).tenant_id == a.id
    add_job(factory, b.id, ds_b)
    with session_scope(factory) as s:
        assert repo.claim(s, worker_id="w2", now=utcnow(), lease_s=60).tenant_id == b.id


def _run_in_thread(worker: Worker) -> threading.Thread:
    t = threading.Thread(target=worker.run_once, daemon=True)
    t.start()
    return t


@pytest.fixture
def endless_job(factory, tenant, slow_epochs) -> str:  # type: ignore[no-untyped-def]
    """The only queued job, one that would train for minutes (slowed epochs, no early stopping),
    so a test can act while it runs."""
    creds, ds = tenant
    slow_epochs(0.01)
    drain(factory)
    return add_job(
        factory, creds.id, ds, params={"epochs": 10_000, "patience": 0, "solver": "adam"}
    )


def test_cancel_of_a_running_job_stops_it_and_it_is_not_retried(
    client, factory, tenant, endless_job
) -> None:
    creds, job_id = tenant[0], endless_job
    thread = _run_in_thread(make_worker(client))
    wait_for(lambda: job_row(factory, job_id).progress > 0.2)  # training epochs are under way
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=creds.owner_headers)
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    thread.join(timeout=30)
    assert not thread.is_alive()
    job = job_row(factory, job_id)
    assert job.status == "cancelled" and job.attempt == 1 and job.finished_at is not None
    assert versions_of_job(factory, job_id) == 0
    assert make_worker(client).run_once() is False  # nothing left to claim


def test_a_worker_that_lost_its_lease_drops_its_result(client, factory, endless_job) -> None:
    job_id = endless_job
    thread = _run_in_thread(make_worker(client))
    wait_for(lambda: job_row(factory, job_id).progress > 0.2)
    future = utcnow() + timedelta(seconds=60)  # as if the lease had long expired
    with session_scope(factory) as s:
        repo.reap_expired(s, now=future)
    with session_scope(factory) as s:
        assert repo.claim(s, worker_id="rescuer", now=future, lease_s=600).attempt == 2
    thread.join(timeout=30)
    assert not thread.is_alive()
    job = job_row(factory, job_id)
    assert job.status == "running" and job.attempt == 2 and job.worker_id == "rescuer"
    assert versions_of_job(factory, job_id) == 0


def test_shutdown_hands_a_running_job_back_without_using_up_an_attempt(
    client, factory, endless_job
) -> None:
    job_id = endless_job
    worker = make_worker(client, worker_grace_s=0.3)
    runner = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    wait_for(lambda: job_row(factory, job_id).progress > 0.2)
    started = time.monotonic()
    worker.stop()
    runner.join(timeout=30)
    assert not runner.is_alive() and time.monotonic() - started < 10
    job = job_row(factory, job_id)
    assert job.status == "queued" and job.attempt == 1 and job.max_attempts == 4
    assert "handed back" in (job.error or "")


def test_concurrent_worker_threads_run_every_job_once(client, factory, tenant) -> None:
    creds, ds = tenant
    drain(factory)
    ids = [add_job(factory, creds.id, ds, head=f"par-{i}") for i in range(6)]
    worker = make_worker(client)
    worker.concurrency = 3
    runner = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    try:
        wait_for(lambda: all(job_row(factory, i).status == "succeeded" for i in ids), timeout=60)
    finally:
        worker.stop()
        runner.join(timeout=30)
    assert all(job_row(factory, i).attempt == 1 for i in ids)
    assert all(versions_of_job(factory, i) == 1 for i in ids)
