"""Usage metering in batches (service/heads/metering.py): exact, and durable within the stated
bound (docs/architecture.md, "Usage metering"): counts reach the database at least every
`usage_flush_interval_s` (1 s at most), at shutdown, and a failed write loses nothing.

The process tests run a real `headhub api`: predictions, then SIGKILL once the bound has passed
(nothing counted before the bound may be lost), then predictions and SIGTERM at once (a clean
shutdown writes everything)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from service.app import create_app
from service.db import make_engine, make_sessionmaker
from service.heads import repository as repo
from service.heads.metering import UsageMeter
from service.settings import Settings
from tests.conftest import create_tenant, make_settings
from tests.fixtures.processes import free_port, settings_env, start_headhub
from tests.heads.helpers import add_version

BOUND_S = 1.0  # the stated bound: usage_flush_interval_s may not exceed it
EXTRACTOR = "e" * 64
FEATURES = [[0.1 * i for i in range(20)]]


def _usage(url: str, head_id: str) -> int:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            return repo.usage_counts(session, [head_id]).get(head_id, 0)
    finally:
        engine.dispose()


def _head(tmp_path: Path, db_url: str) -> tuple[object, str, str]:
    """A tenant and a head in the database at `db_url`: (creds, head id, ref)."""
    with TestClient(create_app(make_settings(tmp_path / "data", db_url))) as c:
        t = create_tenant(c, "meter")
        version, _ = add_version(c.app, t.id, "h", extractor_id=EXTRACTOR)
    return t, version.head_id, f"{t.name}/h"


def test_the_bound_is_at_most_one_second(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, usage_flush_interval_s=1.5)
    assert Settings(data_dir=tmp_path).usage_flush_interval_s == BOUND_S


def test_counts_from_many_threads_are_written_exactly(db_url: str, tmp_path: Path) -> None:
    t, head_id, _ = _head(tmp_path, db_url)
    engine = make_engine(db_url)
    meter = UsageMeter(make_sessionmaker(engine), interval_s=0.05).start()
    before = _usage(db_url, head_id)

    def work() -> None:
        for _ in range(500):
            meter.add(head_id, t.id, 1)  # type: ignore[attr-defined]

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    meter.stop()  # the last counts are written at stop
    engine.dispose()
    assert meter.flushes >= 1 and meter.pending == 0
    assert _usage(db_url, head_id) - before == 8 * 500


def test_a_failed_write_keeps_its_counts_for_the_next(db_url: str, tmp_path: Path) -> None:
    t, head_id, _ = _head(tmp_path, db_url)
    engine = make_engine(db_url)
    working = make_sessionmaker(engine)
    down = {"now": True}

    def factory():  # type: ignore[no-untyped-def]
        if down["now"]:
            raise OperationalError("SELECT 1", {}, Exception("database is down"))
        return working()

    meter = UsageMeter(factory, interval_s=BOUND_S)
    before = _usage(db_url, head_id)
    meter.add(head_id, t.id, 3)  # type: ignore[attr-defined]
    with pytest.raises(OperationalError):
        meter.flush()
    meter.flush_quietly()  # logged, kept
    meter.add(head_id, t.id, 2)  # type: ignore[attr-defined]
    assert meter.pending == 5 and meter.failures == 2
    down["now"] = False
    assert meter.flush() == 5
    assert meter.flush() == 0  # nothing twice
    engine.dispose()
    assert _usage(db_url, head_id) - before == 5


def test_counts_reach_the_database_within_the_bound_without_a_read(
    db_url: str, tmp_path: Path
) -> None:
    t, head_id, _ = _head(tmp_path, db_url)
    engine = make_engine(db_url)
    meter = UsageMeter(make_sessionmaker(engine), interval_s=BOUND_S).start()
    try:
        before = _usage(db_url, head_id)
        meter.add(head_id, t.id, 7)  # type: ignore[attr-defined]
        deadline = time.monotonic() + BOUND_S + 2.0  # the bound, plus a busy machine's margin
        while _usage(db_url, head_id) - before != 7:
            assert time.monotonic() < deadline, "not written within the bound"
            time.sleep(0.05)
    finally:
        meter.stop()
        engine.dispose()


def test_a_killed_api_process_loses_nothing_older_than_the_bound_and_sigterm_loses_nothing(
    db_url: str, tmp_path: Path
) -> None:
    t, head_id, ref = _head(tmp_path, db_url)
    settings = make_settings(tmp_path / "data", db_url, rate_limit_per_minute=0)  # same blobs
    headers = {"Authorization": f"Bearer {t.predict_key}"}  # type: ignore[attr-defined]
    body = {"extractor_id": EXTRACTOR, "heads": [ref], "features": FEATURES, "top_k": 1}
    before = _usage(db_url, head_id)

    def run(n: int, then: signal.Signals, wait_s: float) -> None:
        port = free_port()
        api = start_headhub(
            "api",
            "--port",
            str(port),
            log_path=tmp_path / f"api-{port}.log",
            env=settings_env(settings),
            port=port,
            ready_path="/healthz",
        )
        try:
            with httpx.Client(base_url=api.url, timeout=30) as c:
                for _ in range(n):
                    r = c.post("/v1/predict/features", json=body, headers=headers)
                    assert r.status_code == 200, r.text
            time.sleep(wait_s)
            api.signal(then)
            api.wait(30)
        finally:
            api.stop()

    run(5, signal.SIGKILL, BOUND_S + 1.5)  # every count was due before the kill
    assert _usage(db_url, head_id) - before == 5
    run(4, signal.SIGTERM, 0.0)  # no wait at all: the shutdown writes them
    assert _usage(db_url, head_id) - before == 9
