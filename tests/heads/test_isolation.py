"""Tenant isolation for heads: 404 for private, 403 for public (docs/architecture.md,
"Tenancy and keys")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.heads.helpers import add_version

EXTRACTOR = "e" * 64
FEATURES = [[0.1] * 20]

# (name, method, path suffix, json body): every way B could touch A's head.
ACTIONS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("get", "GET", "", None),
    ("get_version", "GET", "/versions/1", None),
    ("patch", "PATCH", "", {"description": "mine now"}),
    ("put_alias", "PUT", "/aliases/production", {"version": 1}),
    ("delete_alias", "DELETE", "/aliases/staging", None),
    ("delete_version", "DELETE", "/versions/1", None),
    ("export", "GET", "/versions/1/export", None),
    ("export_onnx", "GET", "/versions/1/export?format=onnx", None),
]
WRITES = {"patch", "put_alias", "delete_alias", "delete_version"}


@pytest.fixture(scope="module")
def pair(client, app) -> tuple[Any, Any]:
    from tests.conftest import create_tenant

    a, b = create_tenant(client, "iso-a"), create_tenant(client, "iso-b")
    add_version(app, a.id, "secret")
    r = client.put(
        f"/v1/heads/{a.name}/secret/aliases/staging", json={"version": 1}, headers=a.owner_headers
    )
    assert r.status_code == 200
    return a, b


def call(client, headers: dict[str, str], owner: str, action: str, name: str = "secret") -> Any:
    _, method, suffix, body = next(x for x in ACTIONS if x[0] == action)
    return client.request(method, f"/v1/heads/{owner}/{name}{suffix}", json=body, headers=headers)


def predict(client, headers: dict[str, str], ref: str) -> Any:
    body = {"extractor_id": EXTRACTOR, "heads": [ref], "features": FEATURES}
    return client.post("/v1/predict/features", json=body, headers=headers)


def set_visibility(client, a, visibility: str) -> None:
    r = client.patch(
        f"/v1/heads/{a.name}/secret", json={"visibility": visibility}, headers=a.owner_headers
    )
    assert r.status_code == 200


@pytest.mark.parametrize("action", [a[0] for a in ACTIONS])
@pytest.mark.parametrize("key", ["owner", "predict"])
def test_private_head_of_another_tenant_is_404(client, pair, action: str, key: str) -> None:
    a, b = pair
    headers = b.owner_headers if key == "owner" else b.predict_headers
    r = call(client, headers, a.name, action)
    if key == "predict" and action in WRITES:
        assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"
        return
    assert r.status_code == 404, r.text
    assert r.json()["code"] == "head_not_found"
    # Same answer as for a head that does not exist at all: existence does not leak.
    missing = call(client, headers, a.name, action, name="nothing")
    assert missing.json()["detail"].replace("nothing", "secret") == r.json()["detail"]


def test_private_head_of_another_tenant_cannot_be_predicted(client, pair) -> None:
    a, b = pair
    for headers in (b.owner_headers, b.predict_headers):
        r = predict(client, headers, f"{a.name}/secret")
        assert r.status_code == 404 and r.json()["code"] == "head_not_found"
    assert predict(client, a.predict_headers, "secret").status_code == 200


@pytest.mark.parametrize("action", [a[0] for a in ACTIONS])
def test_public_head_is_readable_not_changeable_by_others(client, pair, action: str) -> None:
    a, b = pair
    set_visibility(client, a, "public")
    try:
        r = call(client, b.owner_headers, a.name, action)
        if action in WRITES:
            assert r.status_code == 403 and r.json()["code"] == "not_head_owner"
        else:
            assert r.status_code == 200, r.text
    finally:
        set_visibility(client, a, "private")


def test_making_a_head_private_again_revokes_use(client, pair) -> None:
    a, b = pair
    set_visibility(client, a, "public")
    r = predict(client, b.predict_headers, f"{a.name}/secret")
    assert r.status_code == 200
    assert list(r.json()["results"][0]["predictions"]) == [f"{a.name}/secret:1"]
    set_visibility(client, a, "private")
    assert predict(client, b.predict_headers, f"{a.name}/secret").status_code == 404
    assert call(client, b.owner_headers, a.name, "export").status_code == 404


def test_suspended_public_head_is_403_for_everyone(client, pair, admin_headers) -> None:
    a, b = pair
    set_visibility(client, a, "public")
    suspend: Callable[[bool], Any] = lambda on: client.patch(  # noqa: E731
        f"/v1/admin/heads/{a.name}/secret", json={"suspended": on}, headers=admin_headers
    )
    assert suspend(True).status_code == 200
    try:
        for headers, ref in ((b.predict_headers, f"{a.name}/secret"), (a.owner_headers, "secret")):
            r = predict(client, headers, ref)
            assert r.status_code == 403 and r.json()["code"] == "head_suspended"
        assert call(client, b.owner_headers, a.name, "get").status_code == 403
        assert call(client, a.owner_headers, a.name, "get").status_code == 200
    finally:
        assert suspend(False).status_code == 200
        set_visibility(client, a, "private")
