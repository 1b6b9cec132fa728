"""Unauthenticated probes cost no query per hit
(docs/threats.md, "What one tenant learns about others, and about the service"): /readyz and
/metrics reuse their database and extractor answers for HEADHUB_PROBE_CACHE_S."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from service.app import create_app
from service.settings import Settings
from tests.conftest import make_settings

TTL_S = 3.0


@pytest.fixture(scope="module")
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("data"), db_url, probe_cache_s=TTL_S)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


class Queries:
    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.engine, self.n = engine, 0

    def _count(self, *args: object) -> None:
        self.n += 1

    def __enter__(self) -> Queries:
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
def test_hammering_a_probe_costs_one_round_of_queries_per_period(
    client: TestClient, path: str
) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    client.get(path)  # warm: the first answer of the period is computed
    start = time.monotonic()
    with Queries(engine) as q, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: client.get(path).status_code, range(40)))
    if time.monotonic() - start < TTL_S:  # all 40 fell inside the period
        assert q.n == 0, q.n
    else:  # a loaded machine: at most one refresh per elapsed period
        assert q.n <= 4 * (1 + (time.monotonic() - start) / TTL_S), q.n
    assert len(set(statuses)) == 1  # the same cached answer (readyz: 503, no extractor here)
    time.sleep(TTL_S + 0.2)
    with Queries(engine) as q:
        client.get(path)
    assert q.n >= 1  # the next period reads again
