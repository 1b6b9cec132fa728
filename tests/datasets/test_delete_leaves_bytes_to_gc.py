"""Deleting a dataset leaves the image bytes to `headhub gc` and its grace period
(docs/threats.md, "Storage, secrets, headers and dependencies").

Blobs are content-addressed and shared between tenants. Deleting them as soon as no committed
row referred to them raced another tenant's upload of the same bytes: its blob written, its row
not yet committed, then its bytes gone under a row that points at them.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.storage.blobstore import image_key, sha256_hex
from service.storage.gc import collect_garbage
from tests.datasets.conftest import MakeTenant, new_dataset, upload_files
from tests.datasets.makers import noise_png


def test_a_deleted_datasets_bytes_wait_for_gc(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant()
    data = noise_png(4242)
    key = image_key(sha256_hex(data))
    ds = new_dataset(client, t.owner_headers)
    assert upload_files(client, t.owner_headers, ds, [("a.png", data)]).json()["added"] == 1
    blobs = client.app.state.blobs  # type: ignore[attr-defined]
    assert blobs.exists(key)

    # Another tenant's upload of the same bytes is under way: its blob is written, its row not.
    blobs.put(key, data)
    assert client.delete(f"/v1/datasets/{ds}", headers=t.owner_headers).status_code == 204
    assert blobs.exists(key)  # still there for the upload in flight

    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    collect_garbage(factory, blobs, grace_s=3600)
    assert blobs.exists(key)  # written moments ago: inside the grace period
    collect_garbage(factory, blobs, grace_s=0, now=10**10)
    assert not blobs.exists(key)  # unreferenced and old: gc removes it
