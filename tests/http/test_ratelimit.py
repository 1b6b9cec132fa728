"""Rate limits per key, per tenant, per client address and for failed authentications: 429
problem+json with a `code` and Retry-After; in memory, and shared by every process through the real
Redis (docs/architecture.md, "Tenancy and keys")."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import RateLimited
from service.http.ratelimit import (
    Buckets,
    MemoryBuckets,
    RedisBuckets,
    Rule,
    Take,
    TokenBucketLimiter,
    address_bucket,
    make_limiter,
)
from tests.conftest import create_tenant, make_settings
from tests.fixtures.clock import FakeClock
from tests.fixtures.processes import free_port
from tests.fixtures.redis import unique_prefix


def test_bucket_allows_burst_then_refuses_with_time_to_next_token() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(60, burst=3, clock=clock)  # one token per second
    for _ in range(3):
        limiter.check("k")
    with pytest.raises(RateLimited) as exc:
        limiter.check("k")
    assert exc.value.status == 429
    assert exc.value.headers["Retry-After"] == "1"
    clock.now += 1.0
    limiter.check("k")  # refilled one token


def test_bucket_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(60, burst=2, clock=clock)
    clock.now += 3600
    assert limiter.acquire("k") == 0.0
    assert limiter.acquire("k") == 0.0
    assert limiter.acquire("k") > 0.0


def test_keys_have_independent_buckets() -> None:
    limiter = TokenBucketLimiter(60, burst=1, clock=FakeClock())
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    limiter.check("b")


def test_memory_is_bounded_by_forgetting_stalest_keys() -> None:
    limiter = TokenBucketLimiter(60, burst=1, max_keys=10, clock=FakeClock())
    for i in range(100):
        limiter.check(f"k{i}")
    assert len(limiter._buckets) == 10


def test_zero_rate_disables_limiting() -> None:
    assert make_limiter(0) is None


@pytest.fixture(scope="module")
def limited_client(
    db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, TestClient]]:
    """(limited, unlimited) apps on one database: 3 requests per key, then one a minute, so the
    test does not depend on how fast the machine serves; setup goes through the unlimited one."""
    data = tmp_path_factory.mktemp("rl")
    limited = make_settings(data, db_url, rate_limit_per_minute=1, rate_limit_burst=3)
    free = make_settings(data, db_url, rate_limit_per_minute=0)
    with (
        TestClient(create_app(limited), raise_server_exceptions=False) as a,
        TestClient(create_app(free), raise_server_exceptions=False) as b,
    ):
        yield a, b


def test_api_answers_429_with_retry_after_and_other_tenants_are_unaffected(
    limited_client: tuple[TestClient, TestClient],
) -> None:
    client, setup = limited_client
    a, b = create_tenant(setup, "rla"), create_tenant(setup, "rlb")
    url_a = f"/v1/tenants/{a.name}/keys"
    statuses = [client.get(url_a, headers=a.owner_headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = client.get(url_a, headers=a.owner_headers)
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "rate_limited"
    assert 30 <= int(refused.headers["Retry-After"]) <= 60
    ok_b = client.get(f"/v1/tenants/{b.name}/keys", headers=b.owner_headers)
    assert ok_b.status_code == 200


# --- several buckets per check: key and tenant, address and failed authentications ----------


def test_a_check_takes_from_every_bucket_or_from_none() -> None:
    clock = FakeClock()
    buckets = MemoryBuckets(clock=clock)
    key = Rule.make("key", 60, 5, "rate_limited", "key")
    tenant = Rule.make("tenant", 60, 2, "tenant_rate_limited", "tenant")
    assert key and tenant
    assert buckets.take([Take("k1", key), Take("t", tenant)]) is None
    assert buckets.take([Take("k2", key), Take("t", tenant)]) is None
    refusal = buckets.take([Take("k1", key), Take("t", tenant)])
    assert refusal is not None and refusal.rule is tenant and refusal.wait_s == pytest.approx(1.0)
    # The refused check took nothing from k1: 4 of its 5 tokens are left.
    assert [buckets.take([Take("k1", key)]) for _ in range(4)] == [None] * 4
    assert buckets.take([Take("k1", key)]) is not None
    # A look (cost 0) takes nothing.
    for _ in range(10):
        assert buckets.take([Take("look", tenant, cost=0)]) is None


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    assert address_bucket("2001:db8:1:2:aaaa::1") == address_bucket("2001:db8:1:2:ffff::9")
    assert address_bucket("2001:db8:1:3::1") != address_bucket("2001:db8:1:2::1")
    assert address_bucket("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_bucket("192.0.2.7") == "192.0.2.7"


@pytest.fixture(scope="module")
def setup_client(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An unlimited app on the module's database, for creating tenants and keys."""
    free = make_settings(tmp_path_factory.mktemp("rl-setup"), db_url, rate_limit_per_minute=0)
    with TestClient(create_app(free), raise_server_exceptions=False) as c:
        yield c


def _limited(db_url: str, tmp: Path, **limits: object) -> TestClient:
    settings = make_settings(tmp, db_url, **({"rate_limit_per_minute": 0} | limits))
    return TestClient(create_app(settings), raise_server_exceptions=False)


def test_tenant_limit_covers_every_key_of_the_tenant(
    db_url: str, tmp_path: Path, setup_client: TestClient
) -> None:
    a, b = create_tenant(setup_client, "rlt"), create_tenant(setup_client, "rlu")
    extra = setup_client.post(
        f"/v1/tenants/{a.name}/keys", json={"scope": "owner", "name": "x"}, headers=a.owner_headers
    ).json()["key"]
    keys = [a.owner_key, extra, a.predict_key]
    with _limited(
        db_url,
        tmp_path,
        rate_limit_per_minute=100,
        rate_limit_tenant_per_minute=1,
        rate_limit_tenant_burst=3,
    ) as client:
        for key in keys:  # one request per key: three keys, the tenant's three tokens
            r = client.get("/v1/heads", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        minted = setup_client.post(
            f"/v1/tenants/{a.name}/keys",
            json={"scope": "owner", "name": "y"},
            headers=a.owner_headers,
        ).json()["key"]
        refused = client.get("/v1/heads", headers={"Authorization": f"Bearer {minted}"})
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "tenant_rate_limited"
        assert 30 <= int(refused.headers["Retry-After"]) <= 60
        assert client.get("/v1/heads", headers=b.owner_headers).status_code == 200


def test_address_limit_applies_before_authentication(
    db_url: str, tmp_path: Path, setup_client: TestClient
) -> None:
    a = create_tenant(setup_client, "rla")
    settings = make_settings(
        tmp_path,
        db_url,
        rate_limit_per_minute=0,
        rate_limit_address_per_minute=1,
        rate_limit_address_burst=3,
    )
    app = create_app(settings)
    # One lifespan per app: the second address's client shares it without entering another.
    other = TestClient(app, raise_server_exceptions=False, client=("192.0.2.11", 1000))
    with TestClient(app, raise_server_exceptions=False, client=("192.0.2.10", 1000)) as one:
        assert one.get("/v1/heads").status_code == 401  # anonymous requests count too
        assert one.get("/v1/heads", headers=a.owner_headers).status_code == 200
        assert one.get("/v1/heads", headers=a.owner_headers).status_code == 200
        refused = one.get("/v1/heads", headers=a.owner_headers)
        assert refused.status_code == 429
        assert refused.json()["code"] == "address_rate_limited"
        assert 30 <= int(refused.headers["Retry-After"]) <= 60
        assert other.get("/v1/heads", headers=a.owner_headers).status_code == 200
        assert one.get("/healthz").status_code == 200  # probes are not /v1: never limited


def test_failed_authentications_are_limited_per_address(
    db_url: str, tmp_path: Path, setup_client: TestClient
) -> None:
    a = create_tenant(setup_client, "rlf")
    settings = make_settings(
        tmp_path,
        db_url,
        rate_limit_per_minute=0,
        auth_failures_per_minute=1,
        auth_failures_burst=2,
    )
    app = create_app(settings)
    wrong = {"Authorization": f"Bearer hh_{'0' * 16}_{'x' * 43}"}
    other = TestClient(app, raise_server_exceptions=False, client=("192.0.2.21", 1000))
    with TestClient(app, raise_server_exceptions=False, client=("192.0.2.20", 1000)) as attacker:
        for _ in range(5):  # successes cost nothing of the failure budget
            assert attacker.get("/v1/heads", headers=a.owner_headers).status_code == 200
        assert attacker.get("/v1/heads", headers=wrong).status_code == 401
        assert attacker.post("/v1/datasets", json={"name": "x"}, headers=wrong).status_code == 401
        # The budget is spent: even a right key from there is refused before it is looked at.
        for headers in (wrong, a.owner_headers):
            refused = attacker.get("/v1/heads", headers=headers)
            assert refused.status_code == 429, refused.text
            assert refused.json()["code"] == "too_many_auth_failures"
            assert 30 <= int(refused.headers["Retry-After"]) <= 60
        assert other.get("/v1/heads", headers=a.owner_headers).status_code == 200


# --- shared by every API process: Redis ------------------------------------------------------


def race_for_ten_tokens(first: Buckets, second: Buckets) -> None:
    """Two limiters of one shared store (two processes): a burst of 10 tokens, 40 racing
    threads, exactly 10 served; then a refusal that waits about a second for the next token."""
    rule = Rule.make("key", 60, 10, "rate_limited", "key")
    assert rule is not None
    results: list[bool] = []
    lock = threading.Lock()

    def hit(buckets: Buckets) -> None:
        ok = buckets.take([Take("{t}:key:k", rule)]) is None
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=hit, args=(b,)) for b in [first, second] * 20]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 10 and len(results) == 40
    refusal = second.take([Take("{t}:key:k", rule)])
    assert refusal is not None and 0 < refusal.wait_s <= 1.5  # one token a second


def refuse_a_check_by_its_tenant(buckets: Buckets) -> Rule:
    """A key's bucket of 5 and its tenant's of 1 taken together twice: the second check is
    refused by the tenant's; returns the key's rule (the refused check took none of its tokens,
    the caller checks that 4 are left)."""
    key = Rule.make("key", 600, 5, "rate_limited", "key")
    tenant = Rule.make("tenant", 60, 1, "tenant_rate_limited", "tenant")
    assert key and tenant
    assert buckets.take([Take("{t}:key:a", key), Take("{t}:tenant", tenant)]) is None
    refusal = buckets.take([Take("{t}:key:a", key), Take("{t}:tenant", tenant)])
    assert refusal is not None and refusal.rule is tenant
    return key


def _redis_buckets(redis_url: str) -> RedisBuckets:
    return RedisBuckets(redis_url, prefix=unique_prefix())


def test_redis_buckets_are_one_bucket_for_every_process(redis_url: str) -> None:
    """Two limiters (two API processes) on one Redis: 10 tokens, 40 racing threads, 10 served."""
    first = _redis_buckets(redis_url)
    second = RedisBuckets(redis_url, prefix=first.prefix)
    race_for_ten_tokens(first, second)
    assert first.failures == second.failures == 0  # all answered by Redis


def test_redis_take_is_all_or_nothing_and_expires(redis_url: str) -> None:
    import redis

    buckets = _redis_buckets(redis_url)
    refuse_a_check_by_its_tenant(buckets)
    r = redis.Redis.from_url(redis_url)
    assert float(r.hget(f"{buckets.prefix}{{t}}:key:a", "tokens")) == pytest.approx(4.0, abs=0.2)
    ttl_ms = r.pttl(f"{buckets.prefix}{{t}}:tenant")
    assert 0 < ttl_ms <= 61_000  # a bucket is forgotten once it would be full again


def test_without_redis_each_process_still_limits() -> None:
    buckets = RedisBuckets(f"redis://127.0.0.1:{free_port()}/0", prefix=unique_prefix())
    rule = Rule.make("key", 60, 2, "rate_limited", "key")
    assert rule is not None
    assert buckets.take([Take("k", rule)]) is None
    assert buckets.take([Take("k", rule)]) is None
    assert buckets.take([Take("k", rule)]) is not None  # the fallback's own bucket
    assert buckets.failures == 3


def test_two_apps_on_one_redis_share_key_and_address_limits(
    db_url: str, tmp_path: Path, setup_client: TestClient, redis_url: str
) -> None:
    a = create_tenant(setup_client, "rlr")
    limits = {
        "redis_url": redis_url,
        "redis_prefix": unique_prefix(),
        "rate_limit_per_minute": 1,
        "rate_limit_burst": 3,
    }
    with (
        _limited(db_url, tmp_path / "a", **limits) as one,
        _limited(db_url, tmp_path / "b", **limits) as two,
    ):
        assert isinstance(one.app.state.rate_limiter.buckets, RedisBuckets)  # type: ignore[attr-defined]
        statuses = [
            c.get("/v1/heads", headers=a.owner_headers).status_code for c in (one, two, one)
        ]
        assert statuses == [200, 200, 200]
        refused = two.get("/v1/heads", headers=a.owner_headers)
        assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
