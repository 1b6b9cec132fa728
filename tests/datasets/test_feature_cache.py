"""The feature cache through a real extractor process: each image is computed once per extractor."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from extractor.client import ExtractorClient, ExtractorRejectedImage
from extractor.packing import pack_signs
from extractor.wire import FeatureBatch
from service.app import create_app
from service.datasets.features import ensure_features, load_features
from service.settings import Settings
from service.storage.blobstore import sha256_hex
from tests.conftest import create_tenant, make_settings
from tests.datasets import makers
from tests.datasets.conftest import LIMITS, MakeTenant, new_dataset, upload_files


@pytest.fixture(scope="module")
def settings(
    db_url: str, tmp_path_factory: pytest.TempPathFactory, extractor_process: str
) -> Settings:
    return make_settings(
        tmp_path_factory.mktemp("data"),
        db_url,
        **(LIMITS | {"extractor_urls": [extractor_process]}),
    )


class CountingClient:
    """The real client, counting the images it sends; `rename` poses as another extractor."""

    def __init__(self, inner: ExtractorClient, rename: str | None = None) -> None:
        self.inner, self.rename = inner, rename
        self.sent: list[str] = []

    def info_sync(self) -> dict[str, Any]:
        info = self.inner.info_sync()
        return info | ({"id": self.rename} if self.rename else {})

    def features_sync(
        self, files: Sequence[tuple[str, bytes]], request_id: str | None = None
    ) -> FeatureBatch:
        self.sent += [name for name, _ in files]
        batch = self.inner.features_sync(files, request_id)
        return dataclasses.replace(batch, extractor_id=self.rename) if self.rename else batch


@pytest.fixture
def real_client(extractor_process: str) -> Iterator[ExtractorClient]:
    c = ExtractorClient([extractor_process], timeout=10.0)
    yield c
    c.close()


def test_features_are_computed_once_and_shared_across_datasets(
    client: TestClient, app: FastAPI, make_tenant: MakeTenant, real_client: ExtractorClient
) -> None:
    t = make_tenant("feat")
    imgs = makers.distinct_pngs(5, start=2000)
    ds = new_dataset(client, t.owner_headers)
    upload_files(
        client, t.owner_headers, ds, [(f"{i}.png", d) for i, d in enumerate(imgs[:3])], label="a"
    )
    upload_files(client, t.owner_headers, ds, [("3.png", imgs[3]), ("4.png", imgs[4])], label="b")
    before = client.get(f"/v1/datasets/{ds}", headers=t.owner_headers).json()
    extractor_id = real_client.info_sync()["id"]
    assert before["extractor_id"] == extractor_id
    assert (before["image_count"], before["features_ready"]) == (5, 0)

    counting = CountingClient(real_client)
    progress: list[tuple[int, int]] = []
    sm, blobs = app.state.sessionmaker, app.state.blobs
    n = ensure_features(
        sm,
        counting,
        ds,
        blobs=blobs,
        batch_size=2,
        progress_cb=lambda d, t: progress.append((d, t)),
    )
    assert n == 5
    assert sorted(counting.sent) == sorted(sha256_hex(d) for d in imgs)
    assert progress[0] == (0, 5) and progress[-1] == (5, 5) and len(progress) == 4
    assert ensure_features(sm, counting, ds, blobs=blobs) == 0
    assert len(counting.sent) == 5  # nothing sent again

    after = client.get(f"/v1/datasets/{ds}", headers=t.owner_headers).json()
    assert after["features_ready"] == 5

    other = new_dataset(client, t.owner_headers)
    extra = makers.png(color=(250, 1, 250))
    upload_files(client, t.owner_headers, other, [("x.png", imgs[0]), ("y.png", extra)])
    assert ensure_features(sm, counting, other, blobs=blobs) == 1
    assert counting.sent[-1] == sha256_hex(extra)


def test_loaded_features_match_the_extractor(
    client: TestClient, app: FastAPI, make_tenant: MakeTenant, real_client: ExtractorClient
) -> None:
    t = make_tenant("feat")
    imgs = {"cat": makers.png(color=(9, 200, 9)), "dog": makers.jpeg(color=(200, 9, 9))}
    ds = new_dataset(client, t.owner_headers)
    for label, data in imgs.items():
        upload_files(client, t.owner_headers, ds, [(f"{label}.img", data)], label=label)
    sm = app.state.sessionmaker
    ensure_features(sm, real_client, ds, blobs=app.state.blobs)
    extractor_id = real_client.info_sync()["id"]
    with sm() as s:
        floats, bits, labels, shas = load_features(s, ds, extractor_id)
    assert floats.dtype == np.float32 and bits.dtype == np.uint8
    assert floats.shape[0] == bits.shape[0] == 2 and bits.shape[1] == (floats.shape[1] + 7) // 8
    direct = real_client.features_sync([(label, imgs[label]) for label in labels])
    np.testing.assert_allclose(floats, direct.floats, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(bits, pack_signs(floats))
    assert shas == sorted(shas) and [sha256_hex(imgs[lb]) for lb in labels] == shas


def test_another_extractor_id_computes_again(
    client: TestClient, app: FastAPI, make_tenant: MakeTenant, real_client: ExtractorClient
) -> None:
    t = make_tenant("feat")
    ds = new_dataset(client, t.owner_headers)
    upload_files(client, t.owner_headers, ds, [("a.png", makers.png(color=(3, 30, 130)))])
    sm, blobs = app.state.sessionmaker, app.state.blobs
    first, second = CountingClient(real_client), CountingClient(real_client, rename="f" * 64)
    assert ensure_features(sm, first, ds, blobs=blobs) == 1
    assert ensure_features(sm, second, ds, blobs=blobs) == 1
    assert ensure_features(sm, second, ds, blobs=blobs) == 0
    with sm() as s:
        assert load_features(s, ds, "f" * 64)[0].shape[0] == 1
        assert load_features(s, ds, "0" * 64)[0].shape == (0, 0)


def test_a_refused_image_is_skipped_and_the_rest_stored(
    client: TestClient, app: FastAPI, make_tenant: MakeTenant, real_client: ExtractorClient
) -> None:
    t = make_tenant("feat")
    ds = new_dataset(client, t.owner_headers)
    imgs = makers.distinct_pngs(3, start=3000)
    upload_files(client, t.owner_headers, ds, [(f"{i}.png", d) for i, d in enumerate(imgs)])
    refused = sha256_hex(imgs[1])

    class Refusing(CountingClient):
        def features_sync(
            self, files: Sequence[tuple[str, bytes]], request_id: str | None = None
        ) -> FeatureBatch:
            if any(name == refused for name, _ in files):
                raise ExtractorRejectedImage(refused, "refused for the test", 422)
            return super().features_sync(files, request_id)

    assert (
        ensure_features(app.state.sessionmaker, Refusing(real_client), ds, blobs=app.state.blobs)
        == 2
    )
    got = client.get(f"/v1/datasets/{ds}", headers=t.owner_headers).json()
    assert (got["image_count"], got["features_ready"]) == (3, 2)


def test_upload_warms_the_cache_in_the_background(settings: Settings, tmp_path: Path) -> None:
    warm = settings.model_copy(
        update={"featurize_on_upload": True, "data_dir": tmp_path, "blob_dir": tmp_path / "blobs"}
    )
    with TestClient(create_app(warm), raise_server_exceptions=False) as c:
        t = create_tenant(c, "warm")
        ds = new_dataset(c, t.owner_headers)
        r = upload_files(
            c,
            t.owner_headers,
            ds,
            [("a.png", makers.png(color=(140, 2, 2))), ("b.png", makers.png(color=(141, 2, 2)))],
        )
        assert r.status_code == 200
        # TestClient runs background tasks before returning: the pass has finished.
        got = c.get(f"/v1/datasets/{ds}", headers=t.owner_headers).json()
    assert (got["image_count"], got["features_ready"]) == (2, 2)


def test_dataset_page_answers_when_the_extractor_is_down(
    settings: Settings, tmp_path: Path
) -> None:
    down = settings.model_copy(
        update={
            "extractor_urls": ["http://127.0.0.1:9"],
            "data_dir": tmp_path,
            "blob_dir": tmp_path / "blobs",
        }
    )
    with TestClient(create_app(down), raise_server_exceptions=False) as c:
        t = create_tenant(c, "down")
        ds = new_dataset(c, t.owner_headers)
        got = c.get(f"/v1/datasets/{ds}", headers=t.owner_headers)
    assert got.status_code == 200
    assert got.json()["extractor_id"] is None and got.json()["features_ready"] is None


def test_a_fresh_upload_does_not_reveal_another_tenants_identical_bytes(
    client: TestClient, app: FastAPI, make_tenant: MakeTenant, real_client: ExtractorClient
) -> None:
    """The cache is shared by content, `features_ready` is not: a tenant's upload of bytes
    another tenant featurized shows 0 until its own featurizing covers them, which computes them
    again (so the time it takes tells nothing either)
    (docs/threats.md, "What one tenant learns about others, and about the service")."""
    a, b = make_tenant("priv-a"), make_tenant("priv-b")
    shared = makers.png(color=(17, 171, 71))
    sm, blobs = app.state.sessionmaker, app.state.blobs
    ds_a = new_dataset(client, a.owner_headers)
    upload_files(client, a.owner_headers, ds_a, [("a.png", shared)])
    assert ensure_features(sm, CountingClient(real_client), ds_a, blobs=blobs) == 1
    assert client.get(f"/v1/datasets/{ds_a}", headers=a.owner_headers).json()["features_ready"] == 1

    ds_b = new_dataset(client, b.owner_headers)
    upload_files(client, b.owner_headers, ds_b, [("b.png", shared)])
    fresh = client.get(f"/v1/datasets/{ds_b}", headers=b.owner_headers).json()
    assert (fresh["image_count"], fresh["features_ready"]) == (1, 0)
    counting = CountingClient(real_client)
    assert ensure_features(sm, counting, ds_b, blobs=blobs) == 1
    assert counting.sent == [sha256_hex(shared)]  # computed for b as for any new image
    assert client.get(f"/v1/datasets/{ds_b}", headers=b.owner_headers).json()["features_ready"] == 1

    # b deleting its copy forgets b's claim, and leaves a's untouched
    assert client.delete(f"/v1/datasets/{ds_b}", headers=b.owner_headers).status_code == 204
    assert client.get(f"/v1/datasets/{ds_a}", headers=a.owner_headers).json()["features_ready"] == 1
