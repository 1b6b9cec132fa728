"""Per-key rate limits: 429 with Retry-After; other keys unaffected (docs/architecture.md,
"Tenancy and keys")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import RateLimited
from service.http.ratelimit import TokenBucketLimiter, make_limiter
from tests.conftest import create_tenant, make_settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
