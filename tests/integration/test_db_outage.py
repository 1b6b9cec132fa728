"""PostgreSQL goes away during traffic and a training job -> 503 and not
ready during the outage, then the same processes recover by themselves (pool_pre_ping discards
dead connections) and the job still finishes, once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import make_settings
from tests.fixtures.db import _pg_admin_conn
from tests.jobs.conftest import FAST_QUEUE


@pytest.fixture(scope="module")
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Short leases, so the worker meets the outage with a lease to keep."""
    return make_settings(tmp_path_factory.mktemp("data"), db_url, **FAST_QUEUE)


@pytest.fixture(scope="module")
def pg_name(db_url: str) -> str:
    if not db_url.startswith("postgresql"):
        pytest.skip("connection kills are a PostgreSQL scenario")
    return db_url.rsplit("/", 1)[-1]


def _kill_connections(db: str, *, block: bool) -> int:
    """Refuse new connections (when `block`) and terminate every open one to `db`."""
    with _pg_admin_conn() as conn:
        conn.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS {"false" if block else "true"}')
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,)
        ).fetchall()
    return len(rows)


@pytest.fixture
def outage(pg_name: str) -> Iterator[None]:
    yield
    _kill_connections(pg_name, block=False)  # never leave the database closed


class Traffic:
    """A thread calling a DB-backed endpoint in a loop, recording (time, status)."""

    def __init__(self, client: TestClient, url: str, headers: dict[str, str]) -> None:
        self.client, self.url, self.headers = client, url, headers
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            r = self.client.get(self.url, headers=self.headers)
            self.samples.append((time.monotonic(), r.status_code))
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_killed_connections_are_replaced_transparently(
    client: TestClient, make_tenant, pg_name: str, outage: None
) -> None:  # type: ignore[no-untyped-def]
    t = make_tenant("pgk")
    url = f"/v1/tenants/{t.name}/keys"
    assert client.get(url, headers=t.owner_headers).status_code == 200
    assert _kill_connections(pg_name, block=False) >= 1  # the pool's idle connections die
    statuses = [client.get(url, headers=t.owner_headers).status_code for _ in range(5)]
    assert statuses == [200] * 5


def test_outage_answers_503_then_recovers_without_restart(
    client: TestClient, make_tenant, pg_name: str, outage: None
) -> None:  # type: ignore[no-untyped-def]
    t = make_tenant("pgo")
    url = f"/v1/tenants/{t.name}/keys"
    with Traffic(client, url, t.owner_headers) as traffic:
        time.sleep(0.3)
        down_at = time.monotonic()
        _kill_connections(pg_name, block=True)
        time.sleep(1.0)
        during = client.get(url, headers=t.owner_headers)
        ready = client.get("/readyz")
        up_at = time.monotonic()
        _kill_connections(pg_name, block=False)
        time.sleep(1.0)
    assert during.status_code == 503
    assert during.json()["code"] == "database_unavailable"
    assert during.headers["Retry-After"]
    assert ready.status_code == 503 and ready.json()["database"] is False
    statuses = {s for _, s in traffic.samples}
    assert statuses <= {200, 503}, statuses  # never a 500
    outage_statuses = [s for ts, s in traffic.samples if down_at + 0.2 < ts < up_at]
    assert outage_statuses and set(outage_statuses) == {503}
    after = [s for ts, s in traffic.samples if ts > up_at + 0.5]
    assert after and set(after) == {200}  # the same process serves again
    assert client.get(url, headers=t.owner_headers).status_code == 200


@pytest.mark.slow
def test_a_job_running_through_the_outage_still_succeeds_once(
    app,
    client: TestClient,
    make_tenant,
    pg_name: str,
    settings: Settings,
    outage: None,
    slow_epochs,
) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from service.db import make_engine, make_sessionmaker
    from service.heads.tables import HeadVersion
    from service.jobs.worker import Worker
    from tests.jobs.helpers import FakeExtractor, seed_dataset, wait_for

    slow_epochs(0.05)  # the outage lands in the middle of the job
    t = make_tenant("pgj")
    dataset_id = seed_dataset(app.state.sessionmaker, t.id)
    r = client.post(
        "/v1/jobs",
        headers=t.owner_headers,
        json={
            "dataset_id": dataset_id,
            "head": "through-outage",
            "head_type": "float",
            "params": {
                "epochs": 60,
                "patience": 0,
                "batch_size": 512,
                "lr": 0.05,
                "solver": "adam",
            },
        },
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    def job() -> dict:  # type: ignore[type-arg]
        got = client.get(f"/v1/jobs/{job_id}", headers=t.owner_headers)
        return got.json() if got.status_code == 200 else {"status": f"http {got.status_code}"}

    engine = make_engine(settings.database_url)
    worker = Worker(
        settings,
        session_factory=make_sessionmaker(engine),
        extractor=FakeExtractor(),
        blobs=app.state.blobs,
    )
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: job()["status"] == "running", timeout=30, every=0.2)
        _kill_connections(pg_name, block=True)
        time.sleep(1.5)  # longer than a heartbeat: the worker meets the outage mid-training
        _kill_connections(pg_name, block=False)
        wait_for(
            lambda: job()["status"] in ("succeeded", "failed", "cancelled"), timeout=90, every=0.5
        )
    finally:
        worker.stop()
        thread.join(30)
        engine.dispose()
    final = job()
    assert final["status"] == "succeeded", final
    with app.state.sessionmaker() as session:
        versions = session.scalar(
            select(func.count()).select_from(HeadVersion).where(HeadVersion.job_id == job_id)
        )
    assert versions == 1
