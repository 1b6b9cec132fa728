"""Key and head-resolution caches: a change made through one API process (a real `headhub api`)
reaches another process's cache within the stated bound (docs/architecture.md, "Running across
hosts"): PostgreSQL LISTEN/NOTIFY, Redis pub/sub, or with neither the cache TTL.

Replica A is a real `headhub api` process: what it commits can reach replica B (an app in this
process) only through the notifier, never through this process's own commit hooks. With a
notifier, entries would otherwise live 600 s here, so only the message can explain a change seen
within the bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.http.invalidation import LookupCache
from service.settings import Settings
from tests.conftest import ADMIN_HEADERS, create_tenant, make_settings
from tests.fixtures.db import create_pg_database, drop_pg_database, pg_available
from tests.fixtures.processes import HeadhubProcess, free_port, settings_env, start_headhub
from tests.fixtures.redis import unique_prefix
from tests.heads.helpers import add_version

NOTIFIED_BOUND_S = 2.0  # stated: delivery of one message (milliseconds); margin for a busy CI
EXTRACTOR = "e" * 64
FEATURES = [[0.1 * i for i in range(20)]]


# --- the cache itself ------------------------------------------------------------------------


def test_a_read_racing_an_invalidation_is_not_cached() -> None:
    cache = LookupCache(ttl_s=60, notified_ttl_s=60, notified=False)
    token = cache.token()  # a request starts reading the database ...
    cache.invalidate()  # ... a change commits meanwhile ...
    cache.put("k", "old value", token)  # ... the stale read must not be kept
    assert cache.get("k") is None
    cache.put("k", "new value", cache.token())
    assert cache.get("k") == "new value"


def test_a_notified_cache_caches_nothing_while_its_listener_is_away() -> None:
    cache = LookupCache(ttl_s=60, notified_ttl_s=60, notified=True)
    cache.put("k", 1, cache.token())
    assert cache.get("k") is None  # not connected: every request reads the database
    cache.connected = True
    cache.put("k", 1, cache.token())
    assert cache.get("k") == 1


def test_last_use_stamps_do_not_invalidate_but_revocation_does(db_url: str, tmp_path: Path) -> None:
    with TestClient(
        create_app(make_settings(tmp_path, db_url)), raise_server_exceptions=False
    ) as c:
        lookups: LookupCache = c.app.state.lookups  # type: ignore[attr-defined]
        t = create_tenant(c, "inv")
        before = lookups.invalidations
        for _ in range(3):  # the first use stamps last_used_at: an update that changes nothing
            assert c.get("/v1/heads", headers=t.predict_headers).status_code == 200
        assert lookups.invalidations == before
        key_id = t.predict_key.split("_", 2)[1]
        r = c.delete(f"/v1/tenants/{t.name}/keys/{key_id}", headers=t.owner_headers)
        assert r.status_code == 204
        assert lookups.invalidations > before
        assert c.get("/v1/heads", headers=t.predict_headers).status_code == 401


# --- across processes ----------------------------------------------------------------------


def _wait_for(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` held; fails past `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(f"not seen within {timeout} s")


def _predict(client: TestClient, key: str, ref: str) -> httpx.Response:
    return client.post(
        "/v1/predict/features",
        json={"extractor_id": EXTRACTOR, "heads": [ref], "features": FEATURES, "top_k": 1},
        headers={"Authorization": f"Bearer {key}"},
    )


def _resolved(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return next(iter(r.json()["results"][0]["predictions"]))


@dataclass
class Cluster:
    """Replica A, a real `headhub api` on PostgreSQL that publishes its changes both ways (its
    commits NOTIFY, and it publishes on Redis); each test builds its own replica B."""

    a: HeadhubProcess
    url: str  # the database
    redis: dict[str, Any]
    tmp: Path

    def settings_b(self, **kw: Any) -> Settings:
        return make_settings(self.tmp / "b", self.url, rate_limit_per_minute=0, **kw)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from tests.fixtures.db import PG_BASE
    from tests.fixtures.redis import REDIS_URL, redis_available

    if not pg_available() or not redis_available():
        pytest.skip("needs PostgreSQL and Redis: cross-process invalidation tests skipped")
    tmp = tmp_path_factory.mktemp("replicas")
    name = create_pg_database()
    url = f"{PG_BASE}/{name}"
    redis = {"redis_url": REDIS_URL, "redis_prefix": unique_prefix()}
    settings_a = make_settings(
        tmp / "a", url, rate_limit_per_minute=0, cache_notify="redis", **redis
    )
    port = free_port()
    a = start_headhub(
        "api",
        "--port",
        str(port),
        log_path=tmp / "api-a.log",
        env=settings_env(settings_a),
        port=port,
        ready_path="/healthz",
    )
    try:
        yield Cluster(a, url, redis, tmp)
    finally:
        a.stop()
        drop_pg_database(name)


def _changes_reach_the_other_replica(cluster: Cluster, settings: Settings, bound_s: float) -> None:
    """Suspend, alias move, version delete and key revoke through replica A, each seen by
    replica B (whose cache holds the old answer) within `bound_s`."""
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as b:
            listener = b.app.state.invalidation_listener  # type: ignore[attr-defined]
            assert listener.kind == "none" or listener.wait_connected(10)
            lookups: LookupCache = b.app.state.lookups  # type: ignore[attr-defined]
            t = create_tenant(b, "rep")
            add_version(b.app, t.id, "h", extractor_id=EXTRACTOR, seed=1)
            add_version(b.app, t.id, "h", extractor_id=EXTRACTOR, seed=2)
            owner = {"Authorization": f"Bearer {t.owner_key}"}
            a = httpx.Client(base_url=cluster.a.url, timeout=30)
            r = a.put(
                f"/v1/heads/{t.name}/h/aliases/production", json={"version": 1}, headers=owner
            )
            assert r.status_code == 200, r.text
            ref = f"{t.name}/h"

            def warm() -> None:  # B answers from its cache, for the head and the key
                assert _resolved(_predict(b, t.predict_key, ref)) == f"{ref}:1"
                assert _resolved(_predict(b, t.predict_key, f"{ref}:1")) == f"{ref}:1"
                assert len(lookups) >= 3

            _wait_for(lambda: _resolved(_predict(b, t.predict_key, ref)) == f"{ref}:1", bound_s)
            warm()
            seen: dict[str, float] = {}

            # 1. suspension by the operator on A -> B refuses.
            r = a.patch(
                f"/v1/admin/heads/{t.name}/h", json={"suspended": True}, headers=ADMIN_HEADERS
            )
            assert r.status_code == 200, r.text
            seen["suspend"] = _wait_for(
                lambda: _predict(b, t.predict_key, ref).status_code == 403, bound_s
            )
            assert _predict(b, t.predict_key, ref).json()["code"] == "head_suspended"
            a.patch(f"/v1/admin/heads/{t.name}/h", json={"suspended": False}, headers=ADMIN_HEADERS)
            _wait_for(lambda: _predict(b, t.predict_key, ref).status_code == 200, bound_s)
            warm()

            # 2. alias move on A -> B resolves the new version.
            r = a.put(
                f"/v1/heads/{t.name}/h/aliases/production", json={"version": 2}, headers=owner
            )
            assert r.status_code == 200, r.text
            seen["alias move"] = _wait_for(
                lambda: _resolved(_predict(b, t.predict_key, ref)) == f"{ref}:2", bound_s
            )

            # 3. version delete on A -> B answers 404 for it.
            assert _resolved(_predict(b, t.predict_key, f"{ref}:1")) == f"{ref}:1"
            r = a.delete(f"/v1/heads/{t.name}/h/versions/1", headers=owner)
            assert r.status_code == 204, r.text
            seen["version delete"] = _wait_for(
                lambda: _predict(b, t.predict_key, f"{ref}:1").status_code == 404, bound_s
            )

            # 4. key revocation on A -> B refuses the key.
            assert _predict(b, t.predict_key, ref).status_code == 200
            key_id = t.predict_key.split("_", 2)[1]
            r = a.delete(f"/v1/tenants/{t.name}/keys/{key_id}", headers=owner)
            assert r.status_code == 204, r.text
            seen["key revoke"] = _wait_for(
                lambda: _predict(b, t.predict_key, ref).status_code == 401, bound_s
            )
            print(f"seen by replica B after: {seen}")
    except BaseException:
        print(cluster.a.log())
        raise


def test_postgres_notify_reaches_the_other_replica(cluster: Cluster) -> None:
    settings = cluster.settings_b(cache_notify="postgres", cache_notified_ttl_s=600)
    _changes_reach_the_other_replica(cluster, settings, NOTIFIED_BOUND_S)


def test_redis_pubsub_reaches_the_other_replica(cluster: Cluster) -> None:
    settings = cluster.settings_b(cache_notify="redis", cache_notified_ttl_s=600, **cluster.redis)
    _changes_reach_the_other_replica(cluster, settings, NOTIFIED_BOUND_S)


def test_without_a_notifier_the_ttl_is_the_bound(cluster: Cluster) -> None:
    ttl = 2.0
    settings = cluster.settings_b(cache_notify="none", cache_ttl_s=ttl)
    _changes_reach_the_other_replica(cluster, settings, ttl + 2.0)  # + a busy machine's margin


def test_without_a_notifier_a_long_ttl_keeps_stale_answers(cluster: Cluster) -> None:
    """The control: the cache does hold answers, so the tests above measure the notifier."""
    settings = cluster.settings_b(cache_notify="none", cache_ttl_s=600)
    with TestClient(create_app(settings), raise_server_exceptions=False) as b:
        t = create_tenant(b, "stale")
        add_version(b.app, t.id, "h", extractor_id=EXTRACTOR)
        ref = f"{t.name}/h"
        assert _predict(b, t.predict_key, ref).status_code == 200
        r = httpx.patch(
            f"{cluster.a.url}/v1/admin/heads/{t.name}/h",
            json={"suspended": True},
            headers=ADMIN_HEADERS,
            timeout=30,
        )
        assert r.status_code == 200
        time.sleep(1.0)
        assert _predict(b, t.predict_key, ref).status_code == 200  # stale, as configured
