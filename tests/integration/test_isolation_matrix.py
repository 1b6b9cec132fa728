"""Tenant isolation as one table (docs/architecture.md, "Tenancy and keys").

Every row is one way tenant A could reach one of tenant B's objects. For A's owner key and A's
predict key, the answer for B's object must be the answer for an object that does not exist:
same status, same body apart from the identifier asked for. An owner-only route answers a
predict key 403 `insufficient_scope` whatever the object, so it does not tell either. Admin
routes answer tenant keys 403, and bodies that try to set `owner`, `tenant_id`, `version` or
`status` are refused whole with 422. B's objects are unchanged at the end.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_HEADERS
from tests.integration.conftest import Peer, solid_png

FEATURES = [[0.1] * 20]
OWNER, PREDICT = "owner", "predict"


@dataclass(frozen=True)
class Target:
    """The identifiers a request names: B's real ones, or made-up ones of the same shape."""

    owner: str
    dataset: str
    job: str
    head: str
    sha: str

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.head}"


@dataclass(frozen=True)
class Row:
    name: str
    method: str
    path: str  # formatted with a Target's fields
    scope: str  # the least scope the route accepts
    body: dict[str, Any] | None = None
    upload: bool = False  # multipart `files` (predict) or `label` + `files` (dataset images)

    def call(self, client: TestClient, headers: dict[str, str], t: Target) -> httpx.Response:
        path = self.path.format(**t.__dict__, ref=t.ref)
        body = _fill(self.body, t)
        if not self.upload:
            return client.request(self.method, path, json=body, headers=headers)
        files = [("files", ("x.png", solid_png((9, 9, 9)), "image/png"))]
        data = {"label": "red"} if "datasets" in path else None
        return client.request(self.method, path, data=data, files=files, headers=headers)


def _fill(body: Any, t: Target) -> Any:
    if isinstance(body, str):
        return body.format(ref=t.ref, dataset=t.dataset)
    if isinstance(body, list):
        return [_fill(x, t) for x in body]
    if isinstance(body, dict):
        return {k: _fill(v, t) for k, v in body.items()}
    return body


ROWS = [
    Row("get dataset", "GET", "/v1/datasets/{dataset}", OWNER),
    Row("list dataset images", "GET", "/v1/datasets/{dataset}/images", OWNER),
    Row("upload images", "POST", "/v1/datasets/{dataset}/images", OWNER, upload=True),
    Row("delete image", "DELETE", "/v1/datasets/{dataset}/images/{sha}", OWNER),
    Row("delete dataset", "DELETE", "/v1/datasets/{dataset}", OWNER),
    Row(
        "train on dataset",
        "POST",
        "/v1/jobs",
        OWNER,
        {"dataset_id": "{dataset}", "head": "stolen", "head_type": "float"},
    ),
    Row("get job", "GET", "/v1/jobs/{job}", OWNER),
    Row("cancel job", "POST", "/v1/jobs/{job}/cancel", OWNER),
    Row("get head", "GET", "/v1/heads/{owner}/{head}", PREDICT),
    Row("get version", "GET", "/v1/heads/{owner}/{head}/versions/1", PREDICT),
    Row("export", "GET", "/v1/heads/{owner}/{head}/versions/1/export", PREDICT),
    Row("export onnx", "GET", "/v1/heads/{owner}/{head}/versions/1/export?format=onnx", PREDICT),
    Row("put alias", "PUT", "/v1/heads/{owner}/{head}/aliases/production", OWNER, {"version": 1}),
    Row("delete alias", "DELETE", "/v1/heads/{owner}/{head}/aliases/production", OWNER),
    Row("patch head", "PATCH", "/v1/heads/{owner}/{head}", OWNER, {"visibility": "public"}),
    Row("delete version", "DELETE", "/v1/heads/{owner}/{head}/versions/1", OWNER),
    Row(
        "predict features",
        "POST",
        "/v1/predict/features",
        PREDICT,
        {"extractor_id": "e" * 64, "heads": ["{ref}"], "features": FEATURES},
    ),
    Row("predict images", "POST", "/v1/predict?heads={ref}", PREDICT, upload=True),
    Row("list keys", "GET", "/v1/tenants/{owner}/keys", OWNER),
    Row("create key", "POST", "/v1/tenants/{owner}/keys", OWNER, {"scope": "owner", "name": "x"}),
]


def _same_length(real: str, prefix: str = "") -> str:
    """A made-up identifier as long as `real`, so not even the body's length differs."""
    return (prefix + uuid.uuid4().hex * 3)[: len(real)]


def targets(b: Peer) -> dict[str, Target]:
    real = Target(b.name, b.dataset_id, b.job_id, b.head, b.image_sha256)
    missing_head = Target(
        b.name,
        uuid.uuid4().hex,
        uuid.uuid4().hex,
        _same_length(b.head, "h"),
        _same_length(b.image_sha256),
    )
    missing_tenant = Target(
        _same_length(b.name, "t"), missing_head.dataset, missing_head.job, b.head, missing_head.sha
    )
    return {"b": real, "missing": missing_head, "no such tenant": missing_tenant}


def normalized(r: httpx.Response, t: Target) -> dict[str, Any]:
    """The response with the identifiers the request named blanked out."""
    text = r.text
    for value in sorted(t.__dict__.values(), key=len, reverse=True):
        text = text.replace(value, "<ID>")
    return {"status": r.status_code, "type": r.headers.get("content-type"), "body": text}


def b_state(client: TestClient, b: Peer) -> dict[str, Any]:
    h = b.owner_headers
    return {
        "dataset": client.get(f"/v1/datasets/{b.dataset_id}", headers=h).json(),
        "job": client.get(f"/v1/jobs/{b.job_id}", headers=h).json()["status"],
        "head": client.get(f"/v1/heads/{b.name}/{b.head}", headers=h).json(),
        "keys": client.get(f"/v1/tenants/{b.name}/keys", headers=h).json(),
    }


@pytest.fixture(scope="module")
def b_before(client: TestClient, peers: tuple[Peer, Peer]) -> dict[str, Any]:
    return b_state(client, peers[1])


@pytest.mark.parametrize("key", [OWNER, PREDICT])
@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_another_tenants_object_answers_like_a_missing_one(
    client: TestClient, peers: tuple[Peer, Peer], b_before: dict[str, Any], row: Row, key: str
) -> None:
    a, b = peers
    headers = a.owner_headers if key == OWNER else a.predict_headers
    named = targets(b)
    answers = {what: row.call(client, headers, t) for what, t in named.items()}
    real = answers["b"]
    if key == PREDICT and row.scope == OWNER:
        assert real.status_code == 403 and real.json()["code"] == "insufficient_scope"
    else:
        assert real.status_code == 404, real.text
        assert real.headers["content-type"] == "application/problem+json"
    shown = {what: normalized(r, named[what]) for what, r in answers.items()}
    assert shown["b"] == shown["missing"], shown
    if "{owner}" in row.path or (row.body and "{ref}" in str(row.body)):
        assert shown["b"] == shown["no such tenant"], shown


def test_own_objects_are_reachable_with_the_same_requests(
    client: TestClient, peers: tuple[Peer, Peer]
) -> None:
    """The 404s above are about ownership, not broken routes: A reads its own objects."""
    a, _ = peers
    own = Target(a.name, a.dataset_id, a.job_id, a.head, a.image_sha256)
    for row in ROWS:
        if row.method == "GET":
            r = row.call(client, a.owner_headers, own)
            assert r.status_code == 200, (row.name, r.text)


def test_another_tenants_objects_are_unchanged(
    client: TestClient, peers: tuple[Peer, Peer], b_before: dict[str, Any]
) -> None:
    _, b = peers
    for row in ROWS:  # every write, once more, in the order that would do the most harm
        row.call(client, peers[0].owner_headers, targets(b)["b"])
    assert b_state(client, b) == b_before


ADMIN_ROWS = [
    ("GET", "/v1/tenants", None),
    ("POST", "/v1/tenants", {"name": "mine-now"}),
    ("GET", "/v1/admin/heads", None),
    ("GET", "/v1/admin/heads?owner={owner}", None),
    ("PATCH", "/v1/admin/heads/{owner}/{head}", {"suspended": True}),
    ("GET", "/v1/admin/jobs", None),
    ("GET", "/v1/admin/jobs?owner={owner}", None),
]


@pytest.mark.parametrize("key", [OWNER, PREDICT])
@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROWS)
def test_admin_routes_refuse_tenant_keys(
    client: TestClient,
    peers: tuple[Peer, Peer],
    key: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    a, b = peers
    headers = a.owner_headers if key == OWNER else a.predict_headers
    answers = [
        client.request(method, path.format(owner=t.owner, head=t.head), json=body, headers=headers)
        for t in targets(b).values()
    ]
    for r in answers:
        assert r.status_code == 403, r.text
        assert r.json()["code"] == "insufficient_scope"
    assert len({r.text for r in answers}) == 1  # says nothing about the object named


FORBIDDEN_FIELDS = ["owner", "tenant_id", "version", "status"]


def _writes(a: Peer, b: Peer) -> list[tuple[str, str, str, dict[str, Any], dict[str, str]]]:
    """(name, method, path, valid body, headers) of every create and patch route."""
    h = a.owner_headers
    return [
        ("create dataset", "POST", "/v1/datasets", {"name": "taken-over"}, h),
        (
            "create job",
            "POST",
            "/v1/jobs",
            {"dataset_id": a.dataset_id, "head": "taken-over", "head_type": "float"},
            h,
        ),
        ("patch head", "PATCH", f"/v1/heads/{a.name}/{a.head}", {"description": "x"}, h),
        ("put alias", "PUT", f"/v1/heads/{a.name}/{a.head}/aliases/staging", {"version": 1}, h),
        ("create key", "POST", f"/v1/tenants/{a.name}/keys", {"scope": "owner", "name": "x"}, h),
        ("create tenant", "POST", "/v1/tenants", {"name": "taken-over"}, ADMIN_HEADERS),
        (
            "admin patch head",
            "PATCH",
            f"/v1/admin/heads/{a.name}/{a.head}",
            {"suspended": False},
            ADMIN_HEADERS,
        ),
    ]


@pytest.mark.parametrize("field", FORBIDDEN_FIELDS)
def test_bodies_cannot_set_server_owned_fields(
    client: TestClient, peers: tuple[Peer, Peer], field: str
) -> None:
    a, b = peers
    values = {"owner": b.name, "tenant_id": b.creds.id, "version": 99, "status": "succeeded"}
    for name, method, path, body, headers in _writes(a, b):
        if field in body:  # `version` is the point of an alias update
            continue
        r = client.request(method, path, json=body | {field: values[field]}, headers=headers)
        assert r.status_code == 422, (name, r.text)
        problem = r.json()
        assert problem["code"] == "validation_error", (name, problem)
        assert any(field in e["loc"] for e in problem["errors"]), (name, problem)
    # Nothing was created on the way: A still has one dataset and one job.
    assert len(client.get("/v1/datasets", headers=a.owner_headers).json()["items"]) == 1
    assert len(client.get("/v1/jobs", headers=a.owner_headers).json()["items"]) == 1
