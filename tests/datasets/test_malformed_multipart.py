"""Malformed multipart bodies are 4xx problems, never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.datasets.conftest import MakeTenant, new_dataset

PNG_PART = (
    b'--xx\r\nContent-Disposition: form-data; name="label"\r\n\r\ndaisy\r\n'
    b'--xx\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n\x89PNG'
)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", PNG_PART + b"\r\n--xx--\r\n"),  # no boundary parameter
        ("multipart/form-data; boundary=xx", b"garbage without any boundary"),
        ("multipart/form-data; boundary=xx", PNG_PART),  # never closed
        ("multipart/form-data; boundary=xx", b"--xx\r\nNo-Disposition: x\r\n\r\nv\r\n--xx--\r\n"),
        ("multipart/form-data; boundary=xx", b""),
        ("text/plain", b"label=daisy"),
    ],
    ids=["no-boundary", "garbage", "unterminated", "no-disposition", "empty", "not-multipart"],
)
def test_malformed_multipart_is_4xx(
    client: TestClient, make_tenant: MakeTenant, content_type: str, body: bytes
) -> None:
    t = make_tenant("mp")
    ds = new_dataset(client, t.owner_headers)
    r = client.post(
        f"/v1/datasets/{ds}/images",
        content=body,
        headers=t.owner_headers | {"content-type": content_type},
    )
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert client.get(f"/v1/datasets/{ds}", headers=t.owner_headers).json()["image_count"] == 0
