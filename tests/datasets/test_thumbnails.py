"""`GET /v1/datasets/{id}/images/{sha256}/thumbnail`: a small re-encoded preview, only of the
caller's own images (docs/architecture.md, "Thumbnails")."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.storage.blobstore import sha256_hex
from tests.conftest import ADMIN_HEADERS
from tests.datasets import makers
from tests.datasets.conftest import MakeTenant, new_dataset, upload_files


def thumbnail_url(dataset_id: str, sha: str) -> str:
    return f"/v1/datasets/{dataset_id}/images/{sha}/thumbnail"


def decoded(body: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(body))
    img.load()
    return img


def big_noisy_jpeg(w: int = 900, h: int = 600) -> bytes:
    """Large enough that the JPEG is decoded at a reduced scale (`Image.draft`)."""
    img = Image.frombytes("RGB", (w, h), bytes(range(256)) * (w * h * 3 // 256 + 1))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_png_with_alpha_comes_back_as_a_small_png_and_a_jpeg_as_a_jpeg(
    client: TestClient, make_tenant: MakeTenant
) -> None:
    t = make_tenant("thumb")
    ds = new_dataset(client, t.owner_headers)
    alpha = makers.png(300, 150, (10, 200, 30, 128), mode="RGBA")
    photo = big_noisy_jpeg()
    r = upload_files(client, t.owner_headers, ds, [("a.png", alpha), ("b.jpg", photo)])
    assert r.json()["added"] == 2, r.text

    got = client.get(thumbnail_url(ds, sha256_hex(alpha)), headers=t.owner_headers)
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "image/png"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["cache-control"].startswith("private, max-age=")
    img = decoded(got.content)
    assert img.format == "PNG" and img.mode == "RGBA"
    assert img.size == (128, 64)  # the default size, aspect kept
    assert img.getpixel((5, 5))[3] == 128  # transparency kept
    assert got.content != alpha

    got = client.get(
        thumbnail_url(ds, sha256_hex(photo)), params={"size": 64}, headers=t.owner_headers
    )
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "image/jpeg"
    img = decoded(got.content)
    assert img.format == "JPEG" and img.mode == "RGB"
    assert img.size[0] == 64 and img.size[1] in (42, 43)  # 900x600, aspect kept
    assert len(got.content) < len(photo) // 10


def test_a_small_image_is_never_enlarged_and_the_size_bounds_hold(
    client: TestClient, make_tenant: MakeTenant
) -> None:
    t = make_tenant("thumb")
    ds = new_dataset(client, t.owner_headers)
    small = makers.png(40, 20)
    upload_files(client, t.owner_headers, ds, [("s.png", small)])
    url = thumbnail_url(ds, sha256_hex(small))
    for size in (32, 256):
        got = client.get(url, params={"size": size}, headers=t.owner_headers)
        assert got.status_code == 200, got.text
        assert got.headers["content-type"] == "image/jpeg"  # no transparency
        assert decoded(got.content).size == ((32, 16) if size == 32 else (40, 20))


def test_etag_answers_304_and_depends_on_the_size(
    client: TestClient, make_tenant: MakeTenant
) -> None:
    t = make_tenant("thumb")
    ds = new_dataset(client, t.owner_headers)
    data = makers.noise_png(7)
    upload_files(client, t.owner_headers, ds, [("n.png", data)])
    url = thumbnail_url(ds, sha256_hex(data))
    first = client.get(url, headers=t.owner_headers)
    tag = first.headers["etag"]
    assert sha256_hex(data) in tag
    again = client.get(url, headers=t.owner_headers | {"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == tag
    listed = client.get(url, headers=t.owner_headers | {"If-None-Match": f'"x", W/{tag}'})
    assert listed.status_code == 304
    other = client.get(url, params={"size": 64}, headers=t.owner_headers | {"If-None-Match": tag})
    assert other.status_code == 200 and other.headers["etag"] != tag


def test_another_tenant_and_another_dataset_get_404(
    client: TestClient, make_tenant: MakeTenant
) -> None:
    a, b = make_tenant("thumb-a"), make_tenant("thumb-b")
    theirs = new_dataset(client, b.owner_headers)
    data = makers.png(color=(3, 60, 90))
    upload_files(client, b.owner_headers, theirs, [("b.png", data)])
    sha = sha256_hex(data)
    assert client.get(thumbnail_url(theirs, sha), headers=b.owner_headers).status_code == 200

    missing = "0" * 32
    foreign = client.get(thumbnail_url(theirs, sha), headers=a.owner_headers)
    absent = client.get(thumbnail_url(missing, sha), headers=a.owner_headers)
    for r in (foreign, absent):
        assert r.status_code == 404, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "dataset_not_found"
    # Same answer for "another tenant's" and "none", apart from the id echoed back.
    assert foreign.json()["detail"].replace(theirs, "ID") == absent.json()["detail"].replace(
        missing, "ID"
    )
    # Tagged requests are checked too: a 304 would confirm the image exists.
    tagged = client.get(
        thumbnail_url(theirs, sha), headers=a.owner_headers | {"If-None-Match": "*"}
    )
    assert tagged.status_code == 404

    # The same bytes are stored once, but A's own dataset does not hold them: 404.
    mine = new_dataset(client, a.owner_headers)
    r = client.get(thumbnail_url(mine, sha), headers=a.owner_headers)
    assert r.status_code == 404 and r.json()["code"] == "image_not_found"
    other = new_dataset(client, b.owner_headers)
    r = client.get(thumbnail_url(other, sha), headers=b.owner_headers)
    assert r.status_code == 404 and r.json()["code"] == "image_not_found"

    # A predict key is not an owner key; the admin sees every tenant's dataset.
    r = client.get(thumbnail_url(theirs, sha), headers=b.predict_headers)
    assert r.status_code == 403
    assert client.get(thumbnail_url(theirs, sha), headers=ADMIN_HEADERS).status_code == 200


@pytest.mark.parametrize(
    ("sha", "size"),
    [
        ("A" * 64, "128"),  # upper-case hex
        ("a" * 63, "128"),
        ("a" * 64 + "0", "128"),
        ("g" * 64, "128"),
        (None, "31"),
        (None, "257"),
        (None, "-1"),
        (None, "big"),
        (None, "1e3"),
    ],
)
def test_bad_sha256_or_size_is_422(
    client: TestClient, make_tenant: MakeTenant, sha: str | None, size: str
) -> None:
    t = make_tenant("thumb")
    ds = new_dataset(client, t.owner_headers)
    data = makers.png(color=(9, 9, 9))
    upload_files(client, t.owner_headers, ds, [("x.png", data)])
    r = client.get(
        thumbnail_url(ds, sha or sha256_hex(data)), params={"size": size}, headers=t.owner_headers
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "validation_error"


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import JpegImagePlugin

    from service.datasets import thumbnails

    scales: list[tuple[int, int]] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # type: ignore[no-untyped-def]
        result = draft(self, mode, size)
        scales.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    thumb = thumbnails.render(big_noisy_jpeg(2000, 1200), 128, max_pixels=10_000_000)
    assert scales == [(250, 150)]  # 1/8 scale: 64x fewer pixels decoded
    assert decoded(thumb.data).size == (128, 77)


def test_trailing_bytes_never_come_back_and_the_pixel_limit_holds() -> None:
    from extractor.imaging import ImageRejected
    from service.datasets import thumbnails

    polyglot = makers.png(64, 64) + b"<script>alert(1)</script>"
    thumb = thumbnails.render(polyglot, 64, max_pixels=1_000_000)
    assert b"<script>" not in thumb.data and thumb.media_type == "image/jpeg"
    with pytest.raises(ImageRejected) as info:
        thumbnails.render(makers.png(64, 64), 64, max_pixels=1000)
    assert info.value.status == 413
