"""Dataset tests run with small limits so bombs and oversized bodies stay small and fast."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import TenantCreds, make_settings

MakeTenant = Callable[..., TenantCreds]
Owner = tuple[dict[str, str], str]  # (owner headers, dataset id)

LIMITS: dict[str, Any] = {
    "featurize_on_upload": False,
    "max_body_bytes": 4 * 1024 * 1024,
    "max_files_per_request": 10,
    "max_field_bytes": 1024,
    "max_image_pixels": 1_000_000,
    "max_archive_entries": 50,
    "max_archive_bytes": 3 * 1024 * 1024,
    "max_archive_ratio": 100,
    "max_images_per_tenant": 40,
}


@pytest.fixture(scope="module")
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("data"), db_url, **LIMITS)


def new_dataset(client: TestClient, headers: dict[str, str], name: str | None = None) -> str:
    r = client.post(
        "/v1/datasets", json={"name": name or f"ds-{uuid.uuid4().hex[:8]}"}, headers=headers
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def upload_files(
    client: TestClient,
    headers: dict[str, str],
    dataset_id: str,
    files: list[tuple[str, bytes]],
    label: str = "daisy",
    content_type: str = "application/octet-stream",
) -> httpx.Response:
    return client.post(
        f"/v1/datasets/{dataset_id}/images",
        data={"label": label},
        files=[("files", (name, data, content_type)) for name, data in files],
        headers=headers,
    )


def upload_archive(
    client: TestClient, headers: dict[str, str], dataset_id: str, data: bytes
) -> httpx.Response:
    return client.post(
        f"/v1/datasets/{dataset_id}/images",
        files={"archive": ("images.zip", data, "application/zip")},
        headers=headers,
    )
