"""The S3 blob store against a real S3-protocol server (moto's standalone server, not real S3):
the protocol, streaming without whole copies, the registration guarantee through the API, and
`headhub gc` with its grace period on object storage."""

from __future__ import annotations

import io
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.heads.service import blob_key_for
from service.settings import Settings
from service.storage.blobstore import (
    BlobNotFound,
    BlobStoreUnavailable,
    InvalidBlobKey,
    image_key,
    make_blob_store,
    sha256_hex,
)
from service.storage.gc import collect_garbage
from service.storage.s3 import S3BlobStore, parse_s3_url
from tests.conftest import create_tenant, make_settings
from tests.fixtures.processes import free_port
from tests.fixtures.s3 import MotoServer
from tests.heads.helpers import add_version


def _store(moto: MotoServer, bucket: str, prefix: str = "blobs") -> S3BlobStore:
    settings = make_settings(Path("/nonexistent"), "sqlite://", **moto.settings(bucket, prefix))
    store = make_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    return store


@pytest.fixture(scope="module")
def bucket(moto_server: MotoServer) -> str:
    return moto_server.new_bucket()


def test_blob_url_grammar() -> None:
    assert parse_s3_url("s3://my-bucket/a/b/").prefix == "a/b"
    assert parse_s3_url("s3://my-bucket").prefix == ""
    for bad in ("http://x/y", "s3://UPPER/x", "s3://b/../x", "s3://ok-bucket/a//b"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)


def test_round_trip_and_prefix_isolation(moto_server: MotoServer, bucket: str) -> None:
    store, other = _store(moto_server, bucket, "node"), _store(moto_server, bucket, "other")
    key = image_key(sha256_hex(b"hello"))
    assert not store.exists(key)
    store.put(key, b"hello")
    assert store.exists(key) and store.get(key) == b"hello"
    with store.open(key) as fh:
        assert fh.read() == b"hello"
    assert not other.exists(key)  # another prefix is another store
    assert [k for k, _ in store.scan(time.time() + 60)] == [key]
    assert list(other.scan(time.time() + 60)) == []
    # The object sits under the prefix, nothing outside it.
    listed = moto_server.client().list_objects_v2(Bucket=bucket, Prefix="node/")["Contents"]
    assert [o["Key"] for o in listed] == [f"node/{key}"]
    store.delete(key)
    store.delete(key)  # idempotent
    assert not store.exists(key)
    with pytest.raises(BlobNotFound):
        store.get(key)
    with pytest.raises(InvalidBlobKey):
        store.put("../escape", b"x")


def test_large_blobs_are_not_held_twice(moto_server: MotoServer, bucket: str) -> None:
    """put streams the caller's bytes; get holds the object once; open streams it."""
    store = _store(moto_server, bucket, "big")
    size = 16 * 1024 * 1024
    data = os.urandom(size)
    key = blob_key_for(sha256_hex(data))
    store.put("heads/00/warm-up", b"x")  # the client's lazy setup is not what we measure
    tracemalloc.start()
    try:
        store.put(key, data)
        put_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        got = store.get(key)
        get_peak = tracemalloc.get_traced_memory()[1]
        assert got == data
        del got
        tracemalloc.reset_peak()
        with store.open(key) as fh:
            n = sum(len(chunk) for chunk in iter(lambda: fh.read(1 << 20), b""))
        open_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == size
    assert put_peak < size / 2, f"put allocated {put_peak} bytes for a {size}-byte blob"
    assert get_peak < 1.5 * size, f"get allocated {get_peak} bytes for a {size}-byte blob"
    assert open_peak < size / 2, f"streaming allocated {open_peak} bytes"


def test_multipart_stream_and_gc_aborts_stale_uploads(moto_server: MotoServer, bucket: str) -> None:
    from boto3.s3.transfer import TransferConfig

    store = _store(moto_server, bucket, "mp")
    chunk = 5 * 1024 * 1024  # S3's smallest part
    store._transfer = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk)
    data = os.urandom(2 * chunk + 123)
    store.put_stream("heads/ab/multi", io.BytesIO(data))
    assert store.get("heads/ab/multi") == data
    # A process killed mid-upload leaves an invisible multipart upload behind.
    client = moto_server.client()
    client.create_multipart_upload(Bucket=bucket, Key="mp/heads/cd/killed")
    assert not store.exists("heads/cd/killed")
    # (moto reports one fixed, old `Initiated` date for every upload, so the "too young to
    # abort" side of the cut-off cannot be shown against it.)
    assert store.abort_stale_uploads(time.time() + 60) == 1
    assert client.list_multipart_uploads(Bucket=bucket, Prefix="mp/").get("Uploads", []) == []


def test_unreachable_store_is_unavailable_not_missing() -> None:
    store = S3BlobStore(
        "s3://headhub-test/x",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        access_key_id="k",
        secret_access_key="s",
    )
    with pytest.raises(BlobStoreUnavailable):
        store.get("heads/aa/x")
    with pytest.raises(BlobStoreUnavailable):
        store.put("heads/aa/x", b"x")


# --- through the API and gc -----------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_settings(
    db_url: str, tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer
) -> Settings:
    return make_settings(
        tmp_path_factory.mktemp("s3data"),
        db_url,
        featurize_on_upload=False,
        **moto_server.settings(moto_server.new_bucket(), "node-a"),
    )


@pytest.fixture(scope="module")
def s3_app(s3_settings: Settings) -> Iterator[tuple[object, TestClient]]:
    app = create_app(s3_settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield app, c


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 3, 5)).save(buf, format="PNG")
    return buf.getvalue()


def test_api_stores_in_s3_and_gc_keeps_what_rows_refer_to(
    s3_app: tuple[object, TestClient], s3_settings: Settings
) -> None:
    app, client = s3_app
    blobs = app.state.blobs  # type: ignore[attr-defined]
    assert isinstance(blobs, S3BlobStore)
    assert not (s3_settings.data_dir / "blobs").exists()  # nothing on the local disk
    tenant = create_tenant(client, "s3")
    ds = client.post("/v1/datasets", json={"name": "s3"}, headers=tenant.owner_headers).json()
    kept_png = _png(1)
    r = client.post(
        f"/v1/datasets/{ds['id']}/images",
        data={"label": "a"},
        files=[("files", ("a.png", kept_png, "image/png"))],
        headers=tenant.owner_headers,
    )
    assert r.status_code == 200, r.text
    assert blobs.get(image_key(sha256_hex(kept_png))) == kept_png
    version, _ = add_version(app, tenant.id, "s3-head")
    exported = client.get(
        f"/v1/heads/{tenant.name}/s3-head/versions/1/export", headers=tenant.owner_headers
    )
    assert exported.status_code == 200 and sha256_hex(exported.content) == version.sha256

    # Leftovers of registrations that never committed; then, after the cut-off, a young blob.
    orphans = [blob_key_for("f" * 64), image_key(sha256_hex(_png(2)))]
    for key in orphans:
        blobs.put(key, b"x" * 100)
    time.sleep(1.1)  # S3 keeps LastModified to the second
    cutoff = time.time()
    time.sleep(1.1)
    young = image_key(sha256_hex(_png(3)))
    blobs.put(young, b"y" * 100)
    grace = 3600.0
    now = cutoff + grace  # "an hour later" for everything written before the cut-off

    dry = collect_garbage(app.state.sessionmaker, blobs, grace_s=grace, dry_run=True, now=now)  # type: ignore[attr-defined]
    assert (dry.unreferenced, dry.removed, dry.bytes_freed) == (2, 0, 200)
    assert all(blobs.exists(k) for k in orphans)
    report = collect_garbage(app.state.sessionmaker, blobs, grace_s=grace, now=now)  # type: ignore[attr-defined]
    assert (report.unreferenced, report.removed) == (2, 2)
    assert not any(blobs.exists(k) for k in orphans)
    assert blobs.exists(young)  # inside the grace period
    assert blobs.exists(version.blob_key)
    assert blobs.exists(image_key(sha256_hex(kept_png)))


def test_store_outage_is_503_and_stores_nothing(
    db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = make_settings(
        tmp_path_factory.mktemp("s3down"),
        db_url,
        featurize_on_upload=False,
        blob_url="s3://headhub-down/x",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        s3_region="us-east-1",
        s3_access_key_id="k",
        s3_secret_access_key="s",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        tenant = create_tenant(client, "s3down")
        ds = client.post("/v1/datasets", json={"name": "d"}, headers=tenant.owner_headers).json()
        r = client.post(
            f"/v1/datasets/{ds['id']}/images",
            data={"label": "a"},
            files=[("files", ("a.png", _png(9), "image/png"))],
            headers=tenant.owner_headers,
        )
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "blob_store_unavailable"
        assert r.headers["Retry-After"]
        listed = client.get(f"/v1/datasets/{ds['id']}/images", headers=tenant.owner_headers)
        assert listed.status_code == 200 and listed.json()["items"] == []
