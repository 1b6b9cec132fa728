"""Tenants, keys and scopes (docs/architecture.md, "Tenancy and keys")."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from tests.conftest import ADMIN_HEADERS, create_tenant


def test_admin_creates_tenant_and_it_is_listed(client: TestClient) -> None:
    t = create_tenant(client, "acme")
    r = client.get("/v1/tenants", headers=ADMIN_HEADERS, params={"limit": 200})
    assert r.status_code == 200
    assert t.name in [i["name"] for i in r.json()["items"]]


def test_duplicate_tenant_name_is_409(client: TestClient) -> None:
    t = create_tenant(client)
    r = client.post("/v1/tenants", json={"name": t.name}, headers=ADMIN_HEADERS)
    assert r.status_code == 409
    assert r.json()["code"] == "tenant_exists"
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("name", ["A", "x", "has space", "a" * 41, "ünï"])
def test_bad_tenant_names_are_422(client: TestClient, name: str) -> None:
    r = client.post("/v1/tenants", json={"name": name}, headers=ADMIN_HEADERS)
    assert r.status_code == 422


def test_tenant_list_paginates_with_cursor(client: TestClient) -> None:
    for _ in range(3):
        create_tenant(client, "page")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = client.get("/v1/tenants", headers=ADMIN_HEADERS, params=params).json()
        seen += [i["name"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) >= 3


def test_owner_key_works_and_revocation_is_immediate(client: TestClient) -> None:
    t = create_tenant(client)
    r = client.post(
        f"/v1/tenants/{t.name}/keys",
        json={"scope": "predict", "name": "app"},
        headers=t.owner_headers,
    )
    assert r.status_code == 201
    new = r.json()
    assert new["key"].startswith(f"hh_{new['id']}_")
    listed = client.get(f"/v1/tenants/{t.name}/keys", headers=t.owner_headers).json()["items"]
    assert new["id"] in [k["id"] for k in listed]
    assert all("key" not in k for k in listed)
    assert (
        client.delete(
            f"/v1/tenants/{t.name}/keys/{t.owner_key.split('_')[1]}", headers=t.owner_headers
        ).status_code
        == 204
    )
    r = client.get(f"/v1/tenants/{t.name}/keys", headers=t.owner_headers)
    assert r.status_code == 401


def test_owner_cannot_touch_another_tenants_keys(client: TestClient) -> None:
    a, b = create_tenant(client), create_tenant(client)
    for method, path, body in [
        ("POST", f"/v1/tenants/{b.name}/keys", {"scope": "owner", "name": "x"}),
        ("GET", f"/v1/tenants/{b.name}/keys", None),
        ("DELETE", f"/v1/tenants/{b.name}/keys/{b.owner_key.split('_')[1]}", None),
    ]:
        r = client.request(method, path, json=body, headers=a.owner_headers)
        assert r.status_code == 404, (method, path)
        assert b.name in r.json()["detail"]  # the name the caller gave, nothing more


def test_tenant_keys_on_admin_endpoints_are_403(client: TestClient) -> None:
    t = create_tenant(client)
    for headers in (t.owner_headers, t.predict_headers):
        assert client.get("/v1/tenants", headers=headers).status_code == 403
        r = client.post("/v1/tenants", json={"name": "sneaky"}, headers=headers)
        assert r.status_code == 403
        assert r.json()["code"] == "insufficient_scope"


def test_predict_key_cannot_issue_keys(client: TestClient) -> None:
    t = create_tenant(client)
    r = client.post(
        f"/v1/tenants/{t.name}/keys",
        json={"scope": "owner", "name": "x"},
        headers=t.predict_headers,
    )
    assert r.status_code == 403


@pytest.mark.parametrize("extra", [{"id": "x"}, {"tenant_id": "x"}, {"owner": "x"}])
def test_bodies_that_set_server_fields_are_422(client: TestClient, extra: dict) -> None:
    r = client.post("/v1/tenants", json={"name": "fine-name"} | extra, headers=ADMIN_HEADERS)
    assert r.status_code == 422
    t = create_tenant(client)
    r = client.post(
        f"/v1/tenants/{t.name}/keys",
        json={"scope": "owner", "name": "k"} | extra,
        headers=ADMIN_HEADERS,
    )
    assert r.status_code == 422


def test_admin_scope_cannot_be_issued_through_the_api(client: TestClient) -> None:
    t = create_tenant(client)
    r = client.post(
        f"/v1/tenants/{t.name}/keys", json={"scope": "admin", "name": "k"}, headers=ADMIN_HEADERS
    )
    assert r.status_code == 422


def test_missing_malformed_revoked_and_wrong_keys_get_the_same_401(client: TestClient) -> None:
    t = create_tenant(client)
    key_id = t.predict_key.split("_")[1]
    client.delete(f"/v1/tenants/{t.name}/keys/{key_id}", headers=ADMIN_HEADERS)
    variants = [
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer hh__"},
        {"Authorization": f"Bearer {t.owner_key}x"},  # wrong secret
        {"Authorization": "Bearer hh_0000000000000000_secret"},  # unknown id
        t.predict_headers,  # revoked
    ]
    bodies = set()
    for headers in variants:
        r = client.get(f"/v1/tenants/{t.name}/keys", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
        bodies.add(r.text)
    assert len(bodies) == 1


def test_only_a_keyed_hash_is_stored_and_keys_never_reach_logs(
    client: TestClient,
    settings,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.DEBUG)
    t = create_tenant(client)
    secret = t.owner_key.split("_", 2)[2]
    client.get(f"/v1/tenants/{t.name}/keys", headers={"Authorization": f"Bearer {t.owner_key}z"})
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).all()
    engine.dispose()
    dumped = repr(rows)
    assert secret not in dumped and t.owner_key not in dumped
    assert t.owner_key not in caplog.text and secret not in caplog.text


def test_last_use_is_recorded(client: TestClient) -> None:
    t = create_tenant(client)
    client.get(f"/v1/tenants/{t.name}/keys", headers=t.owner_headers)
    keys = client.get(f"/v1/tenants/{t.name}/keys", headers=ADMIN_HEADERS).json()["items"]
    owner = next(k for k in keys if k["id"] == t.owner_key.split("_")[1])
    assert owner["last_used_at"] is not None
