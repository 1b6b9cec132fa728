"""Datasets over real HTTP: create, list, get, upload (files and archive), duplicates, delete."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from service.settings import Settings
from service.storage.blobstore import image_key, sha256_hex
from tests.datasets import makers
from tests.datasets.conftest import MakeTenant, new_dataset, upload_archive, upload_files


def test_create_get_and_list_a_dataset(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant("ds")
    r = client.post(
        "/v1/datasets", json={"name": "flowers", "description": "garden"}, headers=t.owner_headers
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "flowers" and body["description"] == "garden"
    assert body["image_count"] == 0 and body["label_counts"] == {}
    got = client.get(f"/v1/datasets/{body['id']}", headers=t.owner_headers).json()
    assert got["id"] == body["id"]
    listed = client.get("/v1/datasets", headers=t.owner_headers).json()
    assert [d["id"] for d in listed["items"]] == [body["id"]]
    assert listed["next_cursor"] is None


def test_duplicate_dataset_name_is_409(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant("ds")
    new_dataset(client, t.owner_headers, "same")
    r = client.post("/v1/datasets", json={"name": "same"}, headers=t.owner_headers)
    assert r.status_code == 409 and r.json()["code"] == "dataset_exists"


def test_create_refuses_owner_fields_in_body(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant("ds")
    r = client.post(
        "/v1/datasets", json={"name": "x1", "tenant_id": "someone"}, headers=t.owner_headers
    )
    assert r.status_code == 422


def test_list_pages_with_cursor_without_repeats(
    client: TestClient, make_tenant: MakeTenant
) -> None:
    t = make_tenant("ds")
    made = [new_dataset(client, t.owner_headers, f"p{i}") for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/datasets", params=params, headers=t.owner_headers).json()
        assert len(page["items"]) <= 2
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made


def test_bad_cursor_is_400(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant("ds")
    r = client.get("/v1/datasets", params={"cursor": "!!nope"}, headers=t.owner_headers)
    assert r.status_code == 400 and r.json()["code"] == "invalid_cursor"


def test_files_with_label_are_added_and_counted(
    client: TestClient, make_tenant: MakeTenant
) -> None:
    t = make_tenant("ds")
    ds = new_dataset(client, t.owner_headers)
    files = [(f"{i}.png", d) for i, d in enumerate(makers.distinct_pngs(3))] + [
        ("x.jpg", makers.jpeg())
    ]
    r = upload_files(client, t.owner_headers, ds, files, label="daisy")
    assert r.status_code == 200, r.text
    assert r.json() == {"added": 4, "duplicates": 0, "rejected": []}
    got = client.get(f"/v1/datasets/{ds}", headers=t.owner_headers).json()
    assert got["image_count"] == 4 and got["label_counts"] == {"daisy": 4}


def test_images_are_stored_by_sha256(
    client: TestClient, make_tenant: MakeTenant, settings: Settings
) -> None:
    t = make_tenant("ds")
    ds = new_dataset(client, t.owner_headers)
    data = makers.png(color=(1, 99, 3))
    assert upload_files(client, t.owner_headers, ds, [("a.png", data)]).status_code == 200
    assert settings.blob_dir is not None
    stored = settings.blob_dir / image_key(sha256_hex(data))
    assert stored.read_bytes() == data
    assert re.fullmatch(r"images/[0-9a-f]{2}/[0-9a-f]{64}", image_key(sha256_hex(data)))


def test_reupload_is_duplicate_not_error(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant("ds")
    ds = new_dataset(client, t.owner_headers)
    imgs = makers.distinct_pngs(2, start=50)
    first = upload_files(client, t.owner_headers, ds, [("a.png", imgs[0]), ("b.png", imgs[1])])
    assert first.json()["added"] == 2
    again = upload_files(
        client, t.owner_headers, ds, [("a2.png", imgs[0]), ("b2.png", imgs[1]), ("c.png", imgs[1])]
    )
    assert again.status_code == 200
    assert again.json() == {"added": 0, "duplicates": 3, "rejected": []}
    got = client.get(f"/v1/datasets/{ds}", headers=t.owner_headers).json()
    assert got["image_count"] == 2


def test_bad_file_is_listed_and_good_ones_kept(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant("ds")
    ds = new_dataset(client, t.owner_headers)
    good = makers.distinct_pngs(2, start=80)
    files = [
        ("g1.png", good[0]),
        ("bad.png", makers.truncated(makers.noisy_jpeg())),
        ("g2.png", good[1]),
        ("doc.pdf", makers.PDF),
    ]
    r = upload_files(client, t.owner_headers, ds, files)
    assert r.status_code == 200
    body = r.json()
    assert body["added"] == 2 and body["duplicates"] == 0
    assert {x["filename"]: x["code"] for x in body["rejected"]} == {
        "bad.png": "invalid_image",
        "doc.pdf": "unsupported_image_format",
    }
    assert all(x["reason"] for x in body["rejected"])


def test_archive_folders_become_labels(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant("ds")
    ds = new_dataset(client, t.owner_headers)
    imgs = makers.distinct_pngs(5, start=120)
    archive = makers.zip_of(
        {
            "daisy/001.png": imgs[0],
            "daisy/002.png": imgs[1],
            "tulip/a/deep.png": imgs[2],
            "tulip/b.png": imgs[3],
            "rose/": b"",
            "rose/r.png": imgs[4],
            "__MACOSX/daisy/._001.png": b"junk",
            "readme.txt": b"not in a label folder",
            "bad label!/x.png": makers.png(color=(9, 9, 9)),
        }
    )
    r = upload_archive(client, t.owner_headers, ds, archive)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["added"] == 5 and body["duplicates"] == 0
    assert {x["filename"] for x in body["rejected"]} == {"readme.txt", "bad label!/x.png"}
    got = client.get(f"/v1/datasets/{ds}", headers=t.owner_headers).json()
    assert got["label_counts"] == {"daisy": 2, "rose": 1, "tulip": 2}


def test_archive_with_non_image_entry_keeps_the_rest(
    client: TestClient, make_tenant: MakeTenant
) -> None:
    t = make_tenant("ds")
    ds = new_dataset(client, t.owner_headers)
    archive = makers.zip_of(
        {"daisy/ok.png": makers.png(color=(4, 5, 6)), "daisy/notes.pdf": makers.PDF}
    )
    body = upload_archive(client, t.owner_headers, ds, archive).json()
    assert body["added"] == 1
    assert body["rejected"] == [
        {
            "filename": "daisy/notes.pdf",
            "reason": body["rejected"][0]["reason"],
            "code": "unsupported_image_format",
        }
    ]


def test_invalid_label_is_422(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant("ds")
    ds = new_dataset(client, t.owner_headers)
    for label in ["", "../etc", "a" * 65, "tab\there"]:
        r = upload_files(client, t.owner_headers, ds, [("a.png", makers.png())], label=label)
        assert r.status_code == 422, label
        assert r.json()["code"] in {"invalid_label", "label_required"}


def test_upload_shape_errors_are_422(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant("ds")
    ds = new_dataset(client, t.owner_headers)
    url = f"/v1/datasets/{ds}/images"
    png = makers.png()
    no_label = client.post(url, files=[("files", ("a.png", png))], headers=t.owner_headers)
    assert no_label.json()["code"] == "label_required"
    both = client.post(
        url,
        files=[("files", ("a.png", png)), ("archive", ("a.zip", makers.zip_of({"d/a.png": png})))],
        data={"label": "x"},
        headers=t.owner_headers,
    )
    assert both.json()["code"] == "invalid_upload"
    extra = client.post(
        url,
        files=[("files", ("a.png", png))],
        data={"label": "x", "owner": "b"},
        headers=t.owner_headers,
    )
    assert extra.json()["code"] == "unknown_field"
    not_multipart = client.post(url, json={"label": "x"}, headers=t.owner_headers)
    assert not_multipart.status_code == 415
    assert {no_label.status_code, both.status_code, extra.status_code} == {422}


def test_admin_creates_datasets_for_a_named_tenant(
    client: TestClient, make_tenant: MakeTenant, admin_headers
) -> None:
    t = make_tenant("ds")
    missing = client.post("/v1/datasets", json={"name": "adm"}, headers=admin_headers)
    assert missing.status_code == 400 and missing.json()["code"] == "tenant_required"
    r = client.post(
        "/v1/datasets", params={"tenant": t.name}, json={"name": "adm"}, headers=admin_headers
    )
    assert r.status_code == 201
    mine = client.get("/v1/datasets", headers=t.owner_headers).json()["items"]
    assert [d["id"] for d in mine] == [r.json()["id"]]


def test_predict_key_cannot_touch_datasets(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant("ds")
    ds = new_dataset(client, t.owner_headers)
    assert client.get("/v1/datasets", headers=t.predict_headers).status_code == 403
    r = upload_files(client, t.predict_headers, ds, [("a.png", makers.png())])
    assert r.status_code == 403


def test_delete_removes_dataset_and_unshared_blobs(
    client: TestClient, make_tenant: MakeTenant, settings: Settings
) -> None:
    t = make_tenant("ds")
    keep_ds, gone_ds = new_dataset(client, t.owner_headers), new_dataset(client, t.owner_headers)
    shared, own = makers.png(color=(77, 1, 1)), makers.png(color=(78, 1, 1))
    upload_files(client, t.owner_headers, keep_ds, [("s.png", shared)])
    upload_files(client, t.owner_headers, gone_ds, [("s.png", shared), ("o.png", own)])
    r = client.delete(f"/v1/datasets/{gone_ds}", headers=t.owner_headers)
    assert r.status_code == 204
    assert client.get(f"/v1/datasets/{gone_ds}", headers=t.owner_headers).status_code == 404
    assert settings.blob_dir is not None
    assert (settings.blob_dir / image_key(sha256_hex(shared))).exists()
    # Unshared bytes wait for `headhub gc` and its grace period (docs/threats.md)
    assert (settings.blob_dir / image_key(sha256_hex(own))).exists()
    _gc_now(client)
    assert (settings.blob_dir / image_key(sha256_hex(shared))).exists()
    assert not (settings.blob_dir / image_key(sha256_hex(own))).exists()
    again = client.delete(f"/v1/datasets/{gone_ds}", headers=t.owner_headers)
    assert again.status_code == 404


def test_tenant_image_cap_is_409_and_partial_upload_lists_the_rest(
    client: TestClient, make_tenant: MakeTenant, settings: Settings
) -> None:
    t = make_tenant("cap")
    ds = new_dataset(client, t.owner_headers)
    cap = settings.max_images_per_tenant
    imgs = makers.distinct_pngs(cap + 2, start=1000)
    added = 0
    for i in range(0, cap - 2, 10):
        batch = [(f"{j}.png", imgs[j]) for j in range(i, min(i + 10, cap - 2))]
        added += upload_files(client, t.owner_headers, ds, batch).json()["added"]
    assert added == cap - 2
    r = upload_files(
        client, t.owner_headers, ds, [(f"{j}.png", imgs[j]) for j in range(cap - 2, cap + 2)]
    )
    assert r.status_code == 200
    assert r.json()["added"] == 2
    assert [x["code"] for x in r.json()["rejected"]] == ["image_quota_exceeded"] * 2
    full = upload_files(client, t.owner_headers, ds, [("z.png", makers.png(color=(5, 5, 250)))])
    assert full.status_code == 409 and full.json()["code"] == "image_quota_exceeded"


def test_images_are_listed_by_label_and_paged(client: TestClient, make_tenant: MakeTenant) -> None:
    t = make_tenant("ds")
    ds = new_dataset(client, t.owner_headers)
    imgs = makers.distinct_pngs(5, start=4000)
    upload_files(client, t.owner_headers, ds, [("a.png", imgs[0]), ("b.png", imgs[1])], "cat")
    upload_files(client, t.owner_headers, ds, [(f"{i}.png", d) for i, d in enumerate(imgs[2:])])
    url = f"/v1/datasets/{ds}/images"
    cats = client.get(url, params={"label": "cat"}, headers=t.owner_headers).json()
    assert sorted(i["filename"] for i in cats["items"]) == ["a.png", "b.png"]
    assert cats["items"][0]["created_at"].endswith("Z")
    seen, cursor = [], None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get(url, params=params, headers=t.owner_headers).json()
        seen += [i["sha256"] for i in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == sorted(sha256_hex(d) for d in imgs)


def _gc_now(client: TestClient) -> None:
    """`headhub gc` once the grace period is over for every blob written so far."""
    from service.storage.gc import collect_garbage

    app = client.app
    collect_garbage(app.state.sessionmaker, app.state.blobs, grace_s=0, now=10**10)  # type: ignore[attr-defined]


def test_deleting_one_image_updates_counts(
    client: TestClient, make_tenant: MakeTenant, settings: Settings
) -> None:
    t = make_tenant("ds")
    ds = new_dataset(client, t.owner_headers)
    wrong = makers.png(color=(66, 6, 6))
    upload_files(client, t.owner_headers, ds, [("w.png", wrong), ("k.png", makers.png())], "cat")
    sha = sha256_hex(wrong)
    r = client.delete(f"/v1/datasets/{ds}/images/{sha}", headers=t.owner_headers)
    assert r.status_code == 204
    got = client.get(f"/v1/datasets/{ds}", headers=t.owner_headers).json()
    assert got["label_counts"] == {"cat": 1}
    assert settings.blob_dir is not None
    _gc_now(client)  # unreferenced bytes go with `headhub gc`, not with the delete
    assert not (settings.blob_dir / image_key(sha)).exists()
    again = client.delete(f"/v1/datasets/{ds}/images/{sha}", headers=t.owner_headers)
    assert again.status_code == 404 and again.json()["code"] == "image_not_found"
    fixed = upload_files(client, t.owner_headers, ds, [("w.png", wrong)], label="dog")
    assert fixed.json()["added"] == 1
