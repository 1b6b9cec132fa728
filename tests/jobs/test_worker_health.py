"""`headhub worker`'s probes over real HTTP (service/jobs/health.py): /readyz follows the last
database poll, /healthz follows the claim loops' progress, and a long job's heartbeats count as
progress. Time is a fake clock moved by the tests: nothing here waits for a bound to pass."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.db import make_engine, make_sessionmaker
from service.jobs.health import MAX_CONNECTIONS, HealthServer, serve_health
from service.jobs.worker import Worker
from service.settings import Settings
from tests.fixtures.clock import FakeClock
from tests.fixtures.processes import free_port, settings_env
from tests.jobs.helpers import FakeExtractor, add_job, job_row, seed_dataset, wait_for

# Nothing listens on port 9: connections are refused at once.
UNREACHABLE_DB = "postgresql+psycopg://headhub@127.0.0.1:9/headhub"


class BlockingExtractor(FakeExtractor):
    """Holds the job in its first extractor call (inside the heartbeat) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def info_sync(self, request_id: str | None = None) -> dict[str, Any]:
        self.entered.set()
        self.release.wait(60)
        return super().info_sync(request_id)


@pytest.fixture
def factory(client: TestClient):  # type: ignore[no-untyped-def]
    return client.app.state.sessionmaker  # type: ignore[attr-defined]


@pytest.fixture
def running() -> Iterator[Callable[..., tuple[Worker, FakeClock, str]]]:
    """`running(worker)`: the worker's loops in a thread and its probes on an ephemeral port,
    on a fake clock; returns (worker, clock, base URL). Stopped after the test."""
    started: list[tuple[Worker, threading.Thread, HealthServer]] = []

    def start(worker: Worker) -> tuple[Worker, FakeClock, str]:
        clock = FakeClock()
        worker.health.clock = clock
        server = serve_health(worker.health, "127.0.0.1", 0)
        thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
        thread.start()
        started.append((worker, thread, server))
        return worker, clock, f"http://127.0.0.1:{server.port}"

    yield start
    for worker, thread, server in started:
        worker.stop()
        worker.handback.set()
        thread.join(30)
        server.close()
        assert not thread.is_alive()


def make_worker(client: TestClient, factory: Any = None, extractor: Any = None) -> Worker:
    app: Any = client.app
    return Worker(
        app.state.settings,
        session_factory=factory or app.state.sessionmaker,
        extractor=extractor or FakeExtractor(),
        blobs=app.state.blobs,
        name=f"health-{id(factory)}-{id(extractor)}",
    )


def probe(url: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(url, timeout=5)
    assert r.headers["content-type"] == "application/json"
    return r.status_code, r.json()


def test_readyz_is_200_once_the_database_answered_a_poll(client, running) -> None:
    worker, _, url = running(make_worker(client))
    wait_for(lambda: probe(f"{url}/readyz")[0] == 200)
    assert probe(f"{url}/readyz") == (200, {"status": "ready", "database": True})
    assert probe(f"{url}/healthz") == (200, {"status": "ok"})  # as the API's /healthz answers
    worker.stop()  # draining: no new claims, so no longer ready
    status, body = probe(f"{url}/readyz")
    assert status == 503 and body["reason"].startswith("stopping")


def test_readyz_is_503_while_the_database_is_unreachable_and_healthz_stays_200(
    client, running
) -> None:
    unreachable = make_sessionmaker(make_engine(UNREACHABLE_DB))
    _, _, url = running(make_worker(client, factory=unreachable))
    failed = (
        503,
        {"status": "not_ready", "database": False, "reason": "the last database poll failed"},
    )
    wait_for(lambda: probe(f"{url}/readyz") == failed)
    r = httpx.get(f"{url}/readyz", timeout=5)
    assert r.headers["retry-after"] == "5"
    # A database outage is not for a restart to fix: the loop is alive, polling and failing.
    assert probe(f"{url}/healthz") == (200, {"status": "ok"})


def test_healthz_is_503_while_a_loop_is_stuck_and_200_once_it_moves_again(
    client, running, monkeypatch
) -> None:
    worker = make_worker(client)
    real_claim, hung, released = worker.claim, threading.Event(), threading.Event()

    def hanging_claim(worker_id: str) -> Any:  # a poll that never returns until released
        hung.set()
        released.wait(30)
        return real_claim(worker_id)

    monkeypatch.setattr(worker, "claim", hanging_claim)
    _, clock, url = running(worker)
    try:
        assert hung.wait(30)
        assert probe(f"{url}/healthz") == (200, {"status": "ok"})  # no time has passed
        status, body = probe(f"{url}/readyz")
        assert status == 503 and body["reason"] == "the database has not been polled yet"
        clock.now += 2 * worker.health.stale_after_s
        status, body = probe(f"{url}/healthz")
        assert status == 503
        bound = worker.health.stale_after_s
        assert body == {"status": "stuck", "stuck_loops": 1, "bound_s": bound}
    finally:
        released.set()  # the poll returns: progress at the clock's new time
    wait_for(lambda: probe(f"{url}/healthz")[0] == 200)
    wait_for(lambda: probe(f"{url}/readyz")[0] == 200)


def test_a_long_job_keeps_healthz_200_through_its_heartbeats(
    client, factory, make_tenant, running
) -> None:
    t = make_tenant("health")
    job_id = add_job(factory, t.id, seed_dataset(factory, t.id), head="long")
    extractor = BlockingExtractor()
    worker, clock, url = running(make_worker(client, extractor=extractor))
    try:
        assert extractor.entered.wait(30)  # claimed: the loop is inside the job, polls no more
        assert job_row(factory, job_id).status == "running"
        # Far past the bound since the loop's last poll: only the job's heartbeat thread, still
        # beating, can bring /healthz back to 200 (until it beats, the loop is stale).
        clock.now += 10 * worker.health.stale_after_s
        wait_for(lambda: probe(f"{url}/healthz") == (200, {"status": "ok"}))
        assert probe(f"{url}/readyz")[0] == 200  # the heartbeats reached the database
        assert job_row(factory, job_id).status == "running"
    finally:
        extractor.release.set()
    wait_for(lambda: job_row(factory, job_id).status == "succeeded")


def test_the_probe_server_is_bounded_get_only_and_small(client, running) -> None:
    _, _, url = running(make_worker(client))
    # Connections that send nothing hold at most MAX_CONNECTIONS threads (each for the socket
    # timeout at most); past them a connection is closed unread. First, while no other
    # connection can hold a slot; the probe answers again once they are gone.
    host, port = url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=5)
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: _answers(f"{url}/healthz"))
    assert httpx.get(f"{url}/metrics", timeout=5).status_code == 404
    r = httpx.post(f"{url}/healthz", content=b"x" * 1000, timeout=5)
    assert r.status_code == 501 and len(r.content) < 100
    r = httpx.get(f"{url}/healthz?verbose=1", timeout=5)
    assert r.status_code == 200 and len(r.content) < 100


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_headhub_worker_serves_its_probes_on_the_health_port_and_exits_0(
    settings: Settings, headhub_process
) -> None:
    """The console script end to end: HEADHUB_WORKER_HEALTH_PORT (the chart's way) opens the
    port, /readyz answers 200 after the first poll, SIGTERM drains and exits 0."""
    port = free_port()
    env = settings_env(settings) | {
        "HEADHUB_WORKER_HEALTH_PORT": str(port),
        "HEADHUB_LOG_FORMAT": "text",
    }
    worker = headhub_process(
        "worker", "--health-host", "127.0.0.1", env=env, port=port, ready_path="/readyz"
    )
    assert httpx.get(f"{worker.url}/healthz", timeout=5).json() == {"status": "ok"}
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0, worker.log()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{worker.url}/healthz", timeout=5)
