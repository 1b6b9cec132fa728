"""Untrusted input through real HTTP: every bad input is a 4xx, nothing leaks
(docs/architecture.md, "Untrusted input")."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from service.datasets.tables import DatasetImage
from service.settings import Settings
from tests.datasets import makers
from tests.datasets.conftest import MakeTenant, Owner, new_dataset, upload_files


def _count(client: TestClient, headers: dict[str, str], ds: str) -> int:
    return int(client.get(f"/v1/datasets/{ds}", headers=headers).json()["image_count"])


def _blob_files(settings: Settings) -> set[str]:
    assert settings.blob_dir is not None
    return {
        p.relative_to(settings.blob_dir).as_posix()
        for p in settings.blob_dir.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def owner(client: TestClient, make_tenant: MakeTenant) -> Owner:
    t = make_tenant("bad")
    return t.owner_headers, new_dataset(client, t.owner_headers)


# --- a single bad file is the request's failure, naming the file ---------------------------------


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("cut.jpg", makers.truncated(makers.noisy_jpeg()), 422, "invalid_image"),
        ("cut.png", makers.truncated(makers.png(64, 64, (1, 2, 3))), 422, "invalid_image"),
        # 413 (not 422 "truncated": its pixel data is bogus) shows no pixel was decoded.
        ("bomb.png", makers.png_pixel_bomb(), 413, "image_too_large"),
        ("text.jpg", b"hello, I am plain text pretending to be a JPEG", 422, "invalid_image"),
        ("empty.png", b"", 422, "empty_image"),
        ("doc.pdf", makers.PDF, 415, "unsupported_image_format"),
        ("pic.jpg", makers.PDF, 415, "unsupported_image_format"),
        ("art.eps", makers.EPS, 415, "unsupported_image_format"),
    ],
    ids=[
        "truncated-jpeg",
        "truncated-png",
        "169mpx-png",
        "spoofed-text",
        "empty",
        "pdf",
        "pdf-named-jpg",
        "eps",
    ],
)
def test_single_bad_file_fails_with_its_status_and_stores_nothing(
    client: TestClient,
    owner: Owner,
    settings: Settings,
    name: str,
    data: bytes,
    status: int,
    code: str,
) -> None:
    headers, ds = owner
    before = _blob_files(settings)
    r = upload_files(client, headers, ds, [(name, data)], content_type="image/jpeg")
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code
    assert name in r.json()["detail"]
    assert _count(client, headers, ds) == 0
    assert _blob_files(settings) == before


def test_pixel_bomb_is_small_on_the_wire() -> None:
    bomb = makers.png_pixel_bomb()
    assert len(bomb) < 20_000
    assert struct.unpack(">II", bomb[16:24]) == (13_000, 13_000)  # IHDR width, height


def test_bad_files_among_good_ones_are_listed(client: TestClient, owner: Owner) -> None:
    headers, ds = owner
    files = [
        ("ok.png", makers.png(color=(3, 3, 3))),
        ("bomb.png", makers.png_pixel_bomb()),
        ("doc.pdf", makers.PDF),
        ("cut.jpg", makers.truncated(makers.noisy_jpeg())),
    ]
    r = upload_files(client, headers, ds, files)
    assert r.status_code == 200
    assert {x["filename"]: x["code"] for x in r.json()["rejected"]} == {
        "bomb.png": "image_too_large",
        "doc.pdf": "unsupported_image_format",
        "cut.jpg": "invalid_image",
    }
    assert r.json()["added"] == 1


def test_spoofed_type_with_real_image_bytes_is_judged_by_content(
    client: TestClient, owner: Owner
) -> None:
    headers, ds = owner
    r = upload_files(
        client, headers, ds, [("photo.gif", makers.png(color=(8, 8, 8)))], content_type="image/gif"
    )
    assert r.status_code == 200 and r.json()["added"] == 1


# --- odd modes are accepted and normalised -------------------------------------------------------


def _sixteen_bit_png() -> bytes:
    import numpy as np

    arr = np.full((8, 8), 65535, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    return buf.getvalue()


def test_odd_modes_are_accepted(client: TestClient, owner: Owner, app: FastAPI) -> None:
    headers, ds = owner
    files = [
        ("cmyk.jpg", makers.jpeg(mode="CMYK", color=(0, 50, 100, 0))),
        ("palette.png", _palette_with_transparency()),
        ("la.png", makers.png(mode="LA", color=(100, 128))),
        ("rgba.png", makers.png(mode="RGBA", color=(1, 2, 3, 4))),
        ("sixteen.png", _sixteen_bit_png()),
        ("rotated.jpg", makers.exif_rotated_jpeg(40, 20)),
    ]
    r = upload_files(client, headers, ds, files)
    assert r.status_code == 200, r.text
    assert r.json() == {"added": 6, "duplicates": 0, "rejected": []}
    with app.state.sessionmaker() as s:
        rotated = s.query(DatasetImage).filter_by(dataset_id=ds, filename="rotated.jpg").one()
    assert (rotated.width, rotated.height) == (20, 40)  # stored in display orientation


# --- body and form limits ------------------------------------------------------------------------


def _multipart(label: str, files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "testboundary1234"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="label"\r\n\r\n{label}\r\n'.encode()
    ]
    for name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_body_over_limit_with_content_length_is_413(
    client: TestClient, owner: Owner, settings: Settings
) -> None:
    headers, ds = owner
    body, ctype = _multipart("daisy", [("big.png", b"\0" * (settings.max_body_bytes + 1))])
    r = client.post(
        f"/v1/datasets/{ds}/images", content=body, headers=headers | {"content-type": ctype}
    )
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    assert _count(client, headers, ds) == 0


def test_chunked_body_over_limit_is_413(
    client: TestClient, owner: Owner, settings: Settings
) -> None:
    headers, ds = owner
    body, ctype = _multipart("daisy", [("big.png", b"\0" * (settings.max_body_bytes * 2))])

    def chunks() -> Iterator[bytes]:  # no Content-Length: httpx sends it chunked
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    r = client.post(
        f"/v1/datasets/{ds}/images", content=chunks(), headers=headers | {"content-type": ctype}
    )
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    assert _count(client, headers, ds) == 0


def test_chunked_json_body_over_limit_is_413_not_400(
    client: TestClient, owner: Owner, settings: Settings
) -> None:
    headers, _ = owner
    payload = b'{"name": "x", "description": "' + b"a" * settings.max_body_bytes + b'"}'
    r = client.post(
        "/v1/datasets",
        content=iter([payload[:1000], payload[1000:]]),
        headers=headers | {"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"


def test_too_many_file_parts_is_400(client: TestClient, owner: Owner, settings: Settings) -> None:
    headers, ds = owner
    files = [
        (f"{i}.png", d)
        for i, d in enumerate(makers.distinct_pngs(settings.max_files_per_request + 1, start=300))
    ]
    r = upload_files(client, headers, ds, files)
    assert r.status_code == 400 and r.json()["code"] == "too_many_parts"
    assert _count(client, headers, ds) == 0


def test_too_many_text_fields_is_400(client: TestClient, owner: Owner) -> None:
    headers, ds = owner
    r = client.post(
        f"/v1/datasets/{ds}/images",
        data={f"f{i}": "x" for i in range(50)},
        files=[("files", ("a.png", makers.png()))],
        headers=headers,
    )
    assert r.status_code == 400 and r.json()["code"] == "too_many_parts"


def test_huge_text_field_is_413(client: TestClient, owner: Owner, settings: Settings) -> None:
    headers, ds = owner
    r = upload_files(
        client, headers, ds, [("a.png", makers.png())], label="a" * (settings.max_field_bytes + 1)
    )
    assert r.status_code == 413 and r.json()["code"] == "field_too_large"


# --- the client's file name never reaches a storage path -----------------------------------------


@pytest.mark.parametrize(
    "evil",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..\\..\\win.ini",
        "a/../../../../tmp/x.png",
        "nul\x00byte.png",
    ],
)
def test_client_filename_never_becomes_a_path(
    client: TestClient, owner: Owner, settings: Settings, tmp_path_factory, evil: str
) -> None:
    headers, ds = owner
    # Bytes no other test stores (a random colour, size keyed to the case), so one new blob is due.
    data = makers.png(w=9 + len(evil), color=tuple(os.urandom(3)))
    before = _blob_files(settings)
    r = upload_files(client, headers, ds, [(evil, data)])
    assert r.status_code == 200 and r.json()["added"] == 1
    new = _blob_files(settings) - before
    assert len(new) == 1
    (key,) = new
    assert key.startswith("images/") and "passwd" not in key and ".." not in key
    assert settings.blob_dir is not None
    outside = [
        p
        for p in settings.data_dir.rglob("*")
        if p.is_file()
        and settings.blob_dir not in p.parents
        and not p.name.startswith("headhub.db")
        and p.name != "pepper"
    ]
    assert outside == []
