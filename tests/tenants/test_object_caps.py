"""Objects per tenant are capped, also when requests race
(docs/threats.md, "Caps per tenant"): keys (an owner could mint them without end), aliases.
Datasets: tests/datasets/test_quotas.py; heads: tests/jobs/test_limits.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import make_settings
from tests.heads.helpers import add_version

MAX_KEYS = 5
MAX_ALIASES = 3


@pytest.fixture(scope="module")
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(
        tmp_path_factory.mktemp("data"),
        db_url,
        max_keys_per_tenant=MAX_KEYS,
        max_aliases_per_tenant=MAX_ALIASES,
        rate_limit_per_minute=0,
    )


def test_keys_per_tenant_are_capped_even_when_minted_in_parallel(
    client: TestClient, make_tenant
) -> None:
    t = make_tenant("keys")  # holds an owner and a predict key

    def mint(i: int) -> int:
        r = client.post(
            f"/v1/tenants/{t.name}/keys",
            json={"scope": "predict", "name": f"k{i}"},
            headers=t.owner_headers,
        )
        assert r.status_code in (201, 409), r.text
        if r.status_code == 409:
            assert r.json()["code"] == "key_quota_exceeded"
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(mint, range(12)))
    assert codes.count(201) == MAX_KEYS - 2, codes
    keys = client.get(f"/v1/tenants/{t.name}/keys", headers=t.owner_headers).json()["items"]
    assert len(keys) == MAX_KEYS
    spare = next(k for k in keys if k["name"].startswith("k"))
    revoked = client.delete(f"/v1/tenants/{t.name}/keys/{spare['id']}", headers=t.owner_headers)
    assert revoked.status_code == 204
    assert mint(99) == 201  # revoked keys do not count


def test_aliases_per_tenant_are_capped(client: TestClient, make_tenant, app) -> None:
    t = make_tenant("alias")
    for name in ("a", "b"):
        add_version(app, t.id, name)
    made = []
    for head, alias in (("a", "production"), ("a", "staging"), ("b", "production")):
        r = client.put(
            f"/v1/heads/{t.name}/{head}/aliases/{alias}",
            json={"version": 1},
            headers=t.owner_headers,
        )
        made.append(r.status_code)
    assert made == [200, 200, 200]
    r = client.put(
        f"/v1/heads/{t.name}/b/aliases/canary", json={"version": 1}, headers=t.owner_headers
    )
    assert r.status_code == 409 and r.json()["code"] == "alias_quota_exceeded", r.text
    moved = client.put(
        f"/v1/heads/{t.name}/b/aliases/production", json={"version": 1}, headers=t.owner_headers
    )
    assert moved.status_code == 200  # moving an alias is no new object


def test_aliases_per_tenant_are_capped_even_when_set_in_parallel(
    client: TestClient, make_tenant, app
) -> None:
    """Twelve new aliases over three heads, eight requests at a time: the count and the insert
    are serialised by the tenant's lock (on PostgreSQL; SQLite's `BEGIN IMMEDIATE` serialises
    every writer), so exactly the cap is set and the others are 409 `alias_quota_exceeded`."""
    t = make_tenant("alias-race")
    heads = ("a", "b", "c")
    for name in heads:
        add_version(app, t.id, name)
    wanted = [(head, f"alias{i}") for i in range(4) for head in heads]  # 12 new aliases

    def put(i: int) -> int:
        head, alias = wanted[i]
        r = client.put(
            f"/v1/heads/{t.name}/{head}/aliases/{alias}",
            json={"version": 1},
            headers=t.owner_headers,
        )
        assert r.status_code in (200, 409), r.text
        if r.status_code == 409:
            assert r.json()["code"] == "alias_quota_exceeded", r.text
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(put, range(len(wanted))))
    assert codes.count(200) == MAX_ALIASES, codes
    assert codes.count(409) == len(wanted) - MAX_ALIASES, codes
    stored = [
        alias
        for head in heads
        for alias in client.get(f"/v1/heads/{t.name}/{head}", headers=t.owner_headers).json()[
            "aliases"
        ]
    ]
    assert len(stored) == MAX_ALIASES, stored
