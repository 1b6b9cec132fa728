"""Head registry over real HTTP on SQLite and PostgreSQL: versions, aliases, admin, export."""

from __future__ import annotations

import json
import threading
import uuid

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load as st_load_np

from service.db import session_scope
from service.heads import evaluate
from service.heads.headfile import decode_head, read_metadata
from service.heads.service import register_version
from tests.heads.helpers import PREPROCESSING, add_version, known_weights


def url(owner: str, name: str, rest: str = "") -> str:
    return f"/v1/heads/{owner}/{name}{rest}"


def test_register_numbers_versions_and_never_reuses_a_number(client, app, make_tenant) -> None:
    a = make_tenant("reg")
    versions = [add_version(app, a.id, "flowers", seed=seed)[0] for seed in range(3)]
    h = a.owner_headers
    assert app.state.blobs.exists(versions[2].blob_key)
    assert client.delete(url(a.name, "flowers", "/versions/3"), headers=h).status_code == 204
    assert not app.state.blobs.exists(versions[2].blob_key)  # removed once the delete committed
    assert app.state.blobs.exists(versions[1].blob_key)
    v, _ = add_version(app, a.id, "flowers", seed=9)
    assert v.version == 4
    body = client.get(url(a.name, "flowers"), headers=h).json()
    assert [x["version"] for x in body["versions"]] == [1, 2, 4]
    assert body["owner"] == a.name and body["visibility"] == "private"


def test_version_document_matches_the_stored_blob(client, app, make_tenant) -> None:
    a = make_tenant("doc")
    _, weights = add_version(app, a.id, "pets", head_type="binary", labels=["x", "y"])
    r = client.get(url(a.name, "pets", "/versions/1"), headers=a.owner_headers)
    assert r.status_code == 200
    doc = r.json()
    assert doc["ref"] == f"{a.name}/pets:1" and doc["head_type"] == "binary"
    assert doc["labels"] == ["x", "y"] and doc["feature_dim"] == 20
    blob = client.get(url(a.name, "pets", "/versions/1/export"), headers=a.owner_headers)
    assert blob.status_code == 200
    assert len(blob.content) == doc["size_bytes"]
    import hashlib

    assert hashlib.sha256(blob.content).hexdigest() == doc["sha256"]
    meta = read_metadata(blob.content)
    assert json.loads(meta["labels"]) == ["x", "y"]
    assert json.loads(meta["preprocessing"]) == PREPROCESSING
    assert meta["extractor_id"] == "e" * 64
    tensors = st_load_np(blob.content)
    np.testing.assert_array_equal(tensors["weight_bits"], weights["weight_bits"].numpy())


def test_versions_are_immutable(client, app, make_tenant) -> None:
    a = make_tenant("imm")
    add_version(app, a.id, "h", seed=1)
    before = client.get(url(a.name, "h", "/versions/1"), headers=a.owner_headers).json()
    add_version(app, a.id, "h", seed=2)
    after = client.get(url(a.name, "h", "/versions/1"), headers=a.owner_headers).json()
    assert before == after
    for method in ("put", "patch"):
        r = client.request(
            method, url(a.name, "h", "/versions/1"), headers=a.owner_headers, json={}
        )
        assert r.status_code == 405


def test_alias_moves_and_deleting_an_aliased_version_is_409(client, app, make_tenant) -> None:
    a = make_tenant("ali")
    h = a.owner_headers
    add_version(app, a.id, "f", seed=1)
    add_version(app, a.id, "f", seed=2)
    r = client.put(url(a.name, "f", "/aliases/production"), json={"version": 1}, headers=h)
    assert r.status_code == 200 and r.json() == {
        "alias": "production",
        "version": 1,
        "ref": f"{a.name}/f:1",
    }
    r = client.delete(url(a.name, "f", "/versions/1"), headers=h)
    assert r.status_code == 409 and r.json()["code"] == "version_aliased"
    assert r.headers["content-type"].startswith("application/problem+json")
    assert client.put(
        url(a.name, "f", "/aliases/production"), json={"version": 2}, headers=h
    ).is_success
    assert client.get(url(a.name, "f"), headers=h).json()["aliases"] == {"production": 2}
    assert client.delete(url(a.name, "f", "/versions/1"), headers=h).status_code == 204
    assert client.get(url(a.name, "f", "/versions/1"), headers=h).status_code == 404


def test_alias_input_is_checked(client, app, make_tenant) -> None:
    a = make_tenant("alc")
    h = a.owner_headers
    add_version(app, a.id, "f")
    r = client.put(url(a.name, "f", "/aliases/production"), json={"version": 7}, headers=h)
    assert r.status_code == 404 and r.json()["code"] == "head_version_not_found"
    r = client.put(url(a.name, "f", "/aliases/Bad!"), json={"version": 1}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "invalid_alias"
    body = {"version": 1, "owner": "someone-else"}
    r = client.put(url(a.name, "f", "/aliases/staging"), json=body, headers=h)
    assert r.status_code == 422
    r = client.delete(url(a.name, "f", "/aliases/nope"), headers=h)
    assert r.status_code == 404 and r.json()["code"] == "head_alias_not_found"


def test_patch_changes_visibility_and_description_only(client, app, make_tenant) -> None:
    a = make_tenant("pat")
    add_version(app, a.id, "f")
    h = a.owner_headers
    r = client.patch(
        url(a.name, "f"), json={"visibility": "public", "description": "hi"}, headers=h
    )
    assert r.status_code == 200
    assert (r.json()["visibility"], r.json()["description"]) == ("public", "hi")
    for forbidden in ({"suspended": True}, {"tenant_id": "x"}, {"visibility": "secret"}):
        assert client.patch(url(a.name, "f"), json=forbidden, headers=h).status_code == 422
    r = client.patch(url(a.name, "f"), json={"description": "x"}, headers=a.predict_headers)
    assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"


def test_list_heads_pages_through_own_heads_only(client, app, make_tenant) -> None:
    a, b = make_tenant("lsa"), make_tenant("lsb")
    for n in ("c", "a", "b"):
        add_version(app, a.id, n)
    add_version(app, b.id, "zzz")
    first = client.get("/v1/heads?limit=2", headers=a.owner_headers).json()
    assert [x["name"] for x in first["items"]] == ["a", "b"] and first["next_cursor"]
    rest = client.get(
        "/v1/heads", params={"limit": 2, "cursor": first["next_cursor"]}, headers=a.owner_headers
    ).json()
    assert [x["name"] for x in rest["items"]] == ["c"] and rest["next_cursor"] is None
    assert rest["items"][0]["latest_version"] == 1 and rest["items"][0]["version_count"] == 1


def test_admin_lists_filters_and_suspends(client, app, make_tenant, admin_headers) -> None:
    a = make_tenant("adm")
    add_version(app, a.id, "pub")
    add_version(app, a.id, "priv")
    client.patch(url(a.name, "pub"), json={"visibility": "public"}, headers=a.owner_headers)
    r = client.get("/v1/admin/heads", params={"owner": a.name}, headers=admin_headers)
    assert [x["name"] for x in r.json()["items"]] == ["priv", "pub"]
    r = client.get(
        "/v1/admin/heads", params={"owner": a.name, "visibility": "public"}, headers=admin_headers
    )
    assert [x["name"] for x in r.json()["items"]] == ["pub"]
    assert client.get("/v1/admin/heads", headers=a.owner_headers).status_code == 403
    r = client.patch(
        f"/v1/admin/heads/{a.name}/pub", json={"suspended": True}, headers=a.owner_headers
    )
    assert r.status_code == 403
    r = client.patch(
        f"/v1/admin/heads/{a.name}/pub", json={"suspended": True}, headers=admin_headers
    )
    assert r.status_code == 200 and r.json()["suspended"] is True
    # Owner still sees it in the registry, but nobody may use it.
    assert client.get(url(a.name, "pub"), headers=a.owner_headers).json()["suspended"] is True
    r = client.get(url(a.name, "pub", "/versions/1/export"), headers=a.owner_headers)
    assert r.status_code == 403 and r.json()["code"] == "head_suspended"
    client.patch(f"/v1/admin/heads/{a.name}/pub", json={"suspended": False}, headers=admin_headers)
    assert client.get(url(a.name, "pub", "/versions/1/export"), headers=a.owner_headers).is_success


def test_admin_may_version_heads_for_a_tenant(client, app, make_tenant, admin_headers) -> None:
    a = make_tenant("adv")
    add_version(app, a.id, "f", seed=1)
    add_version(app, a.id, "f", seed=2)
    r = client.put(
        url(a.name, "f", "/aliases/production"), json={"version": 2}, headers=admin_headers
    )
    assert r.status_code == 200
    assert client.patch(
        url(a.name, "f"), json={"visibility": "public"}, headers=admin_headers
    ).is_success
    assert client.delete(url(a.name, "f", "/versions/1"), headers=admin_headers).status_code == 204


@pytest.mark.parametrize("head_type", ["float", "binary", "mlp"])
def test_onnx_export_scores_equal_the_service(client, app, make_tenant, head_type) -> None:
    a = make_tenant("onx")
    add_version(app, a.id, "h", head_type=head_type, labels=["p", "q", "r", "s"], seed=5)
    r = client.get(url(a.name, "h", "/versions/1/export?format=onnx"), headers=a.predict_headers)
    assert r.status_code == 200
    assert r.headers["content-disposition"].endswith(f'"{a.name}-h-v1.onnx"')
    sess = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["labels"]) == ["p", "q", "r", "s"]
    assert json.loads(meta["preprocessing"]) == PREPROCESSING and meta["extractor_id"] == "e" * 64
    x = np.random.default_rng(0).normal(size=(7, 20)).astype(np.float32)
    (got,) = sess.run(["scores"], {"features": x})
    blob = client.get(url(a.name, "h", "/versions/1/export"), headers=a.predict_headers).content
    np.testing.assert_allclose(
        got, evaluate.scores(decode_head(blob), x, None), rtol=1e-4, atol=1e-6
    )


def test_unregistered_transaction_leaves_no_version(client, app, make_tenant) -> None:
    a = make_tenant("rb")
    with pytest.raises(RuntimeError), session_scope(app.state.sessionmaker) as session:
        register_version(
            session,
            app.state.blobs,
            tenant_id=a.id,
            head_name="ghost",
            head_type="float",
            labels=["a", "b"],
            extractor_id="e" * 64,
            weights=known_weights("float", 20, 2, 0),
            metrics={},
            dataset_id=None,
            job_id=None,
            preprocessing=PREPROCESSING,
        )
        raise RuntimeError("the job failed after registering")
    assert client.get(url(a.name, "ghost"), headers=a.owner_headers).status_code == 404


def test_register_rejects_weights_that_do_not_fit(app, make_tenant) -> None:
    from service.errors import Unprocessable

    a = make_tenant("bad")
    weights = known_weights("float", 20, 3, 0)
    with pytest.raises(Unprocessable), session_scope(app.state.sessionmaker) as session:
        register_version(
            session,
            app.state.blobs,
            tenant_id=a.id,
            head_name="h",
            head_type="float",
            labels=["only", "two"],
            extractor_id="e" * 64,
            weights=weights,
            metrics={},
            dataset_id=None,
            job_id=None,
            preprocessing={},
        )


def test_concurrent_registrations_get_distinct_numbers(client, app, make_tenant) -> None:
    a = make_tenant("conc")
    name = f"race-{uuid.uuid4().hex[:6]}"
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            add_version(app, a.id, name, seed=seed)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    body = client.get(url(a.name, name), headers=a.owner_headers).json()
    assert sorted(v["version"] for v in body["versions"]) == [1, 2, 3, 4]


def test_openapi_documents_every_head_route_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/heads",
        "/v1/heads/{owner}/{name}",
        "/v1/heads/{owner}/{name}/versions/{version}",
        "/v1/heads/{owner}/{name}/aliases/{alias}",
        "/v1/heads/{owner}/{name}/versions/{version}/export",
        "/v1/admin/heads",
        "/v1/admin/heads/{owner}/{name}",
        "/v1/marketplace",
        "/v1/predict",
        "/v1/predict/features",
    ):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    for name in ("HeadOut", "HeadVersionOut", "PredictResponse", "MarketplaceList", "AliasUpdate"):
        assert schemas[name].get("examples"), name
