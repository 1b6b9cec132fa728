"""Caps on what one tenant stores: bytes per image, image bytes per tenant, labels per dataset,
datasets per tenant, each held when requests race (docs/threats.md, "Caps per tenant")."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import make_settings
from tests.datasets.conftest import LIMITS, MakeTenant, new_dataset, upload_archive, upload_files
from tests.datasets.makers import distinct_pngs, noise_png, zip_of

IMAGE_BYTES = 20_000  # a 48x48 noise PNG is ~7 KB, a 96x96 one ~28 KB
TENANT_BYTES = 60_000
LABELS = 3
DATASETS = 4


@pytest.fixture(scope="module")
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(
        tmp_path_factory.mktemp("data"),
        db_url,
        **(
            LIMITS
            | {
                "max_images_per_tenant": 1000,
                "max_image_bytes": IMAGE_BYTES,
                "max_bytes_per_tenant": TENANT_BYTES,
                "max_labels_per_dataset": LABELS,
                "max_datasets_per_tenant": DATASETS,
            }
        ),
    )


def _count(client: TestClient, headers: dict[str, str], dataset_id: str) -> int:
    return int(client.get(f"/v1/datasets/{dataset_id}", headers=headers).json()["image_count"])


def test_an_image_over_the_byte_limit_is_refused(client: TestClient, make_tenant: MakeTenant):
    t = make_tenant()
    ds = new_dataset(client, t.owner_headers)
    big = noise_png(1, size=96)
    assert len(big) > IMAGE_BYTES
    alone = upload_files(client, t.owner_headers, ds, [("big.png", big)])
    assert alone.status_code == 413 and alone.json()["code"] == "image_bytes_too_large"
    mixed = upload_files(client, t.owner_headers, ds, [("big.png", big), ("ok.png", noise_png(2))])
    assert mixed.status_code == 200
    assert mixed.json()["added"] == 1
    assert [r["code"] for r in mixed.json()["rejected"]] == ["image_bytes_too_large"]
    archive = upload_archive(
        client, t.owner_headers, ds, zip_of({"cat/big.png": big, "cat/ok.png": noise_png(3)})
    )
    assert archive.status_code == 200, archive.text
    assert archive.json()["added"] == 1
    assert [r["code"] for r in archive.json()["rejected"]] == ["image_bytes_too_large"]


def test_image_bytes_per_tenant_are_capped(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant()
    ds = new_dataset(client, t.owner_headers)
    images = [noise_png(100 + i) for i in range(10)]  # ~7 KB each: more than 60 KB together
    r = upload_files(client, t.owner_headers, ds, [(f"{i}.png", d) for i, d in enumerate(images)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["added"] < 10 and {x["code"] for x in body["rejected"]} == {"byte_quota_exceeded"}
    stored = client.get(f"/v1/datasets/{ds}/images", headers=t.owner_headers).json()["items"]
    assert sum(i["size_bytes"] for i in stored) <= TENANT_BYTES
    more = upload_files(client, t.owner_headers, ds, [("more.png", noise_png(999))])
    if more.status_code == 409:  # at the cap exactly: refused before the body is read
        assert more.json()["code"] == "byte_quota_exceeded"
    else:
        assert more.status_code == 200 and more.json()["added"] == 0
        assert more.json()["rejected"][0]["code"] == "byte_quota_exceeded"


def test_labels_per_dataset_are_capped(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant()
    ds = new_dataset(client, t.owner_headers)
    for i, label in enumerate(["a", "b", "c"]):
        r = upload_files(client, t.owner_headers, ds, [(f"{i}.png", distinct_pngs(1, i)[0])], label)
        assert r.status_code == 200 and r.json()["added"] == 1, r.text
    again = upload_files(client, t.owner_headers, ds, [("x.png", distinct_pngs(1, 50)[0])], "a")
    assert again.status_code == 200 and again.json()["added"] == 1
    new = upload_files(client, t.owner_headers, ds, [("y.png", distinct_pngs(1, 60)[0])], "d")
    assert new.status_code == 409 and new.json()["code"] == "too_many_labels"
    entries = {f"l{i}/{i}.png": distinct_pngs(1, 70 + i)[0] for i in range(5)}
    archive = upload_archive(client, t.owner_headers, ds, zip_of(entries))
    assert archive.status_code == 409 and archive.json()["code"] == "too_many_labels"
    labels = client.get(f"/v1/datasets/{ds}", headers=t.owner_headers).json()["label_counts"]
    assert sorted(labels) == ["a", "b", "c"]


def test_datasets_per_tenant_are_capped(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant()
    for _ in range(DATASETS):
        new_dataset(client, t.owner_headers)
    r = client.post("/v1/datasets", json={"name": "one-more"}, headers=t.owner_headers)
    assert r.status_code == 409 and r.json()["code"] == "dataset_quota_exceeded"


def test_caps_hold_when_requests_race(client: TestClient, make_tenant: MakeTenant) -> None:
    """Parallel uploads and creations: the count and the insert are serialised per tenant, so
    no race ends past a cap."""
    t = make_tenant()
    ds = new_dataset(client, t.owner_headers)
    images = [noise_png(300 + i) for i in range(16)]  # ~7 KB each, 8 per cap of 60 KB at most

    def upload(i: int) -> int:
        r = upload_files(client, t.owner_headers, ds, [(f"{i}.png", images[i])])
        assert r.status_code in (200, 409), r.text
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, range(len(images))))
    stored = client.get(f"/v1/datasets/{ds}/images", headers=t.owner_headers).json()["items"]
    assert 0 < len(stored) < len(images)
    assert sum(i["size_bytes"] for i in stored) <= TENANT_BYTES

    def create(i: int) -> int:
        r = client.post(
            "/v1/datasets", json={"name": f"race-{uuid.uuid4().hex[:6]}"}, headers=t.owner_headers
        )
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(create, range(12)))
    assert codes.count(201) == DATASETS - 1, codes  # one dataset exists already
    listed = client.get("/v1/datasets", headers=t.owner_headers).json()["items"]
    assert len(listed) == DATASETS
