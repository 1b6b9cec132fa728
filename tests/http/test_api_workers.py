"""`headhub api --workers N`: the host's workers share their rate-limit buckets and see each
other's cache invalidations at once (service/http/workers.py).

The shared structures are tested directly (two mappings of one file stand for two processes),
then through a real `headhub api --workers 2` on SQLite without a notifier and with a cache TTL
of 600 s: only the shared counter can explain a sibling worker refusing a suspended head, and
only shared buckets can hold several workers to one burst."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.http.invalidation import LookupCache
from service.http.ratelimit import Rule, Take
from service.http.workers import SharedBuckets, SharedCounter
from tests.conftest import ADMIN_HEADERS, create_tenant, make_settings
from tests.fixtures.processes import free_port, settings_env, start_headhub
from tests.heads.helpers import add_version
from tests.http.test_ratelimit import race_for_ten_tokens, refuse_a_check_by_its_tenant

EXTRACTOR = "e" * 64
FEATURES = [[0.1 * i for i in range(20)]]


def test_shared_buckets_are_one_bucket_for_every_worker(tmp_path: Path) -> None:
    """Two mappings of one file stand for two workers."""
    race_for_ten_tokens(SharedBuckets(tmp_path / "rl"), SharedBuckets(tmp_path / "rl"))


def _take_in_process(path: str, n: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    rule = Rule.make("key", 1, 25, "rate_limited", "key")
    buckets = SharedBuckets(Path(path))
    out.put(sum(buckets.take([Take("{t}:key:p", rule)]) is None for _ in range(n)))  # type: ignore[list-item]


def test_shared_buckets_across_real_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")  # each child maps the file itself
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_take_in_process, args=(str(tmp_path / "rl"), 20, out)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    served = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    assert served == 25  # one burst for the host, not three


def test_a_check_is_all_or_nothing_and_buckets_never_share_a_slot(tmp_path: Path) -> None:
    buckets = SharedBuckets(tmp_path / "rl")
    key = refuse_a_check_by_its_tenant(buckets)
    # the key's bucket was not charged by the refused check: 4 left of 5
    for _ in range(4):
        assert buckets.take([Take("{t}:key:a", key)]) is None
    assert buckets.take([Take("{t}:key:a", key)]) is not None
    # many buckets: each keeps its own count
    many = Rule.make("key", 1, 2, "rate_limited", "key")
    assert many is not None
    for i in range(2000):
        assert buckets.take([Take(f"k{i}", many)]) is None
    for i in range(2000):
        assert buckets.take([Take(f"k{i}", many)]) is None
        assert buckets.take([Take(f"k{i}", many)]) is not None


def test_a_change_in_one_worker_clears_its_siblings_caches(tmp_path: Path) -> None:
    counter = SharedCounter(tmp_path / "generation")
    a = LookupCache(ttl_s=600, notified_ttl_s=600, notified=False, siblings=counter)
    b = LookupCache(
        ttl_s=600, notified_ttl_s=600, notified=False, siblings=SharedCounter(counter.path)
    )
    a.put("k", 1, a.token())
    token = b.token()  # b starts a database read ...
    b.put("k", 1, b.token())
    a.invalidate(siblings=True)  # ... a commits a change
    assert b.get("k") is None and a.get("k") is None
    b.put("k", "stale", token)  # the read that began before the change is not kept
    assert b.get("k") is None


def test_headhub_api_workers_share_limits_and_invalidations(db_url: str, tmp_path: Path) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("one backend is enough for the process test")
    settings = make_settings(
        tmp_path / "data",
        db_url,
        cache_ttl_s=600,  # no notifier on SQLite: without the shared counter, 600 s stale
        rate_limit_per_minute=1,
        rate_limit_burst=12,
        rate_limit_tenant_per_minute=0,
    )
    with TestClient(create_app(settings)) as c:
        t = create_tenant(c, "workers")
        add_version(c.app, t.id, "h", extractor_id=EXTRACTOR)
    port = free_port()
    api = start_headhub(
        "api",
        "--port",
        str(port),
        "--workers",
        "2",
        log_path=tmp_path / "api.log",
        env=settings_env(settings),
        port=port,
        ready_path="/healthz",
    )
    body = {"extractor_id": EXTRACTOR, "heads": [f"{t.name}/h"], "features": FEATURES}

    def predict(key: str) -> int:
        # a fresh connection each time, so both workers answer some of them
        with httpx.Client(base_url=api.url, timeout=30) as h:
            r = h.post(
                "/v1/predict/features", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            return r.status_code

    try:
        _wait_for_both_workers(api.url, tmp_path / "api.log")
        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda _: predict(t.predict_key), range(30)))
        assert statuses.count(200) == 12, statuses  # one burst of 12 across both workers
        assert set(statuses) == {200, 429}
        # The owner key (its own bucket) warms both workers' caches, then the head is suspended
        # through whichever worker takes the PATCH: no worker may answer 200 afterwards.
        owner = t.owner_key
        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(lambda _: predict(owner), range(8))) == {200}
        with httpx.Client(base_url=api.url, timeout=30) as h:
            r = h.patch(
                f"/v1/admin/heads/{t.name}/h", json={"suspended": True}, headers=ADMIN_HEADERS
            )
            assert r.status_code == 200, r.text
        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(lambda _: predict(owner), range(4))) == {403}
    finally:
        api.stop()


def _wait_for_both_workers(url: str, log: Path) -> None:
    """Two workers answer on the port: the request lines of the API's log name two pids."""

    def get(_: int) -> int:
        with httpx.Client(base_url=url, timeout=30) as h:  # a new connection each time
            return h.get("/openapi.json").status_code

    pids: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            assert set(pool.map(get, range(16))) == {200}
            for line in log.read_text().splitlines():
                record = json.loads(line) if line.startswith("{") else {}
                if record.get("path") == "/openapi.json":
                    pids.add(record["pid"])
            if len(pids) >= 2:
                return
    pytest.fail(f"only one worker answered: pids {pids}")
