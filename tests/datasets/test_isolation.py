"""Tenant A cannot see, change or delete B's dataset: 404 (docs/architecture.md,
"Tenancy and keys")."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.settings import Settings
from service.storage.blobstore import image_key, sha256_hex
from tests.datasets import makers
from tests.datasets.conftest import MakeTenant, new_dataset, upload_archive, upload_files


def test_other_tenants_dataset_is_404_for_every_operation(
    client: TestClient, make_tenant: MakeTenant
) -> None:
    a, b = make_tenant("iso-a"), make_tenant("iso-b")
    theirs = new_dataset(client, b.owner_headers, "private")
    upload_files(client, b.owner_headers, theirs, [("b.png", makers.png(color=(1, 1, 200)))])
    missing = "0" * 32
    for ds in (theirs, missing):
        got = client.get(f"/v1/datasets/{ds}", headers=a.owner_headers)
        up = upload_files(client, a.owner_headers, ds, [("a.png", makers.png())])
        zipped = upload_archive(
            client, a.owner_headers, ds, makers.zip_of({"x/a.png": makers.png()})
        )
        deleted = client.delete(f"/v1/datasets/{ds}", headers=a.owner_headers)
        images = client.get(f"/v1/datasets/{ds}/images", headers=a.owner_headers)
        one = client.delete(f"/v1/datasets/{ds}/images/{'a' * 64}", headers=a.owner_headers)
        for r in (got, up, zipped, deleted, images, one):
            assert r.status_code == 404, r.text
            assert r.json()["code"] == "dataset_not_found"
    # Same body for "exists elsewhere" and "does not exist", apart from the id echoed back.
    foreign = client.get(f"/v1/datasets/{theirs}", headers=a.owner_headers).json()
    absent = client.get(f"/v1/datasets/{missing}", headers=a.owner_headers).json()
    assert foreign["detail"].replace(theirs, "ID") == absent["detail"].replace(missing, "ID")
    assert [
        d["id"] for d in client.get("/v1/datasets", headers=a.owner_headers).json()["items"]
    ] == []
    still = client.get(f"/v1/datasets/{theirs}", headers=b.owner_headers).json()
    assert still["image_count"] == 1


def test_tenant_cannot_name_another_tenant(client: TestClient, make_tenant: MakeTenant) -> None:
    a, b = make_tenant("iso-a"), make_tenant("iso-b")
    r = client.post(
        "/v1/datasets", params={"tenant": b.name}, json={"name": "x"}, headers=a.owner_headers
    )
    assert r.status_code == 404
    listed = client.get("/v1/datasets", params={"tenant": b.name}, headers=a.owner_headers)
    assert listed.status_code == 404


def test_same_image_in_two_tenants_is_independent(
    client: TestClient, make_tenant: MakeTenant, settings: Settings
) -> None:
    a, b = make_tenant("iso-a"), make_tenant("iso-b")
    img = makers.png(color=(12, 34, 56))
    ds_a, ds_b = new_dataset(client, a.owner_headers), new_dataset(client, b.owner_headers)
    assert upload_files(client, a.owner_headers, ds_a, [("a.png", img)]).json()["added"] == 1
    assert upload_files(client, b.owner_headers, ds_b, [("b.png", img)]).json()["added"] == 1
    assert client.delete(f"/v1/datasets/{ds_a}", headers=a.owner_headers).status_code == 204
    assert client.get(f"/v1/datasets/{ds_b}", headers=b.owner_headers).json()["image_count"] == 1
    assert settings.blob_dir is not None
    assert (settings.blob_dir / image_key(sha256_hex(img))).read_bytes() == img


def test_missing_key_is_401(client: TestClient) -> None:
    assert client.get("/v1/datasets").status_code == 401
    assert client.post("/v1/datasets", json={"name": "x"}).status_code == 401
