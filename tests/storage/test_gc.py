"""`headhub gc`: unreferenced blobs older than the grace period go; everything referenced stays."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.heads.service import blob_key_for
from service.settings import Settings
from service.storage.blobstore import image_key, sha256_hex
from service.storage.gc import collect_garbage
from tests.conftest import TenantCreds, create_tenant, make_settings
from tests.heads.helpers import add_version


@pytest.fixture(scope="module")
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("data"), db_url, featurize_on_upload=False)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 7, 9)).save(buf, format="PNG")
    return buf.getvalue()


def _age(blob_dir: Path, key: str, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(blob_dir / key, (t, t))


@pytest.fixture(scope="module")
def tenant(client: TestClient) -> TenantCreds:
    return create_tenant(client, "gc")


def test_gc_removes_only_old_unreferenced_blobs(
    app, client: TestClient, tenant: TenantCreds, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    """Leftovers of a failed head registration and of a rolled-back upload are collected."""
    blob_dir = Path(settings.blob_dir)  # type: ignore[arg-type]
    ds = client.post("/v1/datasets", json={"name": "gc"}, headers=tenant.owner_headers).json()
    kept_png = _png(1)
    r = client.post(
        f"/v1/datasets/{ds['id']}/images",
        data={"label": "a"},
        files=[("files", ("a.png", kept_png, "image/png"))],
        headers=tenant.owner_headers,
    )
    assert r.status_code == 200, r.text
    version, _ = add_version(app, tenant.id, "gc-head")

    # Blobs whose rows never committed, plus one written just now (its commit may be in flight).
    orphan_head = blob_key_for("f" * 64)
    orphan_image = image_key(sha256_hex(_png(2)))
    young = image_key(sha256_hex(_png(3)))
    for key in (orphan_head, orphan_image, young):
        app.state.blobs.put(key, b"x" * 100)
    for key in (orphan_head, orphan_image, version.blob_key, image_key(sha256_hex(kept_png))):
        _age(blob_dir, key, 7200)

    dry = collect_garbage(app.state.sessionmaker, app.state.blobs, grace_s=3600, dry_run=True)
    assert (dry.unreferenced, dry.removed, dry.bytes_freed) == (2, 0, 200)
    assert (blob_dir / orphan_head).exists()

    report = collect_garbage(app.state.sessionmaker, app.state.blobs, grace_s=3600)
    assert (report.unreferenced, report.removed) == (2, 2)
    assert not (blob_dir / orphan_head).exists() and not (blob_dir / orphan_image).exists()
    assert (blob_dir / young).exists()  # inside the grace period: maybe a commit in flight
    assert (blob_dir / version.blob_key).exists()
    assert (blob_dir / image_key(sha256_hex(kept_png))).exists()
    r = client.get(f"/v1/datasets/{ds['id']}/images", headers=tenant.owner_headers)
    assert r.status_code == 200 and len(r.json()["items"]) == 1


def test_gc_leaves_keys_outside_its_prefixes(app, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    app.state.blobs.put("exports/keep-me", b"data")
    _age(Path(settings.blob_dir), "exports/keep-me", 7200)  # type: ignore[arg-type]
    collect_garbage(app.state.sessionmaker, app.state.blobs, grace_s=60)
    assert app.state.blobs.exists("exports/keep-me")


def test_cli_gc_reports_a_dry_run(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from service.commands.cli import app as cli_app
    from service.settings import get_settings

    monkeypatch.setenv("HEADHUB_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("HEADHUB_DATA_DIR", str(settings.data_dir))
    get_settings.cache_clear()
    try:
        r = CliRunner().invoke(cli_app, ["gc", "--dry-run", "--grace-minutes", "0"])
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 0, r.output
    assert "unreferenced: would delete" in r.output
