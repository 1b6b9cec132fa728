"""Unsafe archives are refused whole; bombs stop at the cap (docs/architecture.md,
"Untrusted input")."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.datasets.archive import ArchiveLimits, open_archive, scan_archive
from service.errors import PayloadTooLarge
from service.settings import Settings
from tests.datasets import makers
from tests.datasets.conftest import MakeTenant, Owner, new_dataset, upload_archive


@pytest.fixture
def owner(client: TestClient, make_tenant: MakeTenant) -> Owner:
    t = make_tenant("zip")
    return t.owner_headers, new_dataset(client, t.owner_headers)


def _state(
    client: TestClient, headers: dict[str, str], ds: str, settings: Settings
) -> tuple[int, list[Path]]:
    assert settings.blob_dir is not None
    blobs = sorted(p for p in settings.blob_dir.rglob("*") if p.is_file())
    return client.get(f"/v1/datasets/{ds}", headers=headers).json()["image_count"], blobs


GOOD = makers.png(color=(33, 44, 55))


@pytest.mark.parametrize(
    ("archive", "code"),
    [
        (
            makers.zip_of({"daisy/ok.png": GOOD, "../evil.png": makers.png()}),
            "archive_unsafe_entry",
        ),
        (
            makers.zip_of({"daisy/ok.png": GOOD, "daisy/../../evil.png": makers.png()}),
            "archive_unsafe_entry",
        ),
        (
            makers.zip_of({"daisy/ok.png": GOOD, "/etc/cron.d/evil.png": makers.png()}),
            "archive_unsafe_entry",
        ),
        (
            makers.zip_of({"daisy/ok.png": GOOD, "C:/evil.png": makers.png()}),
            "archive_unsafe_entry",
        ),
        (
            makers.zip_of({"daisy/ok.png": GOOD, "daisy\\..\\..\\evil.png": makers.png()}),
            "archive_unsafe_entry",
        ),
        (makers.zip_with_symlink("/etc/passwd"), "archive_unsafe_entry"),
        (makers.zip_encrypted(), "archive_encrypted"),
        (
            makers.zip_of(
                {"daisy/ok.png": GOOD, "daisy/inner.zip": makers.zip_of({"a/b.png": GOOD})}
            ),
            "archive_nested",
        ),
        (
            makers.zip_of(
                {"daisy/ok.png": GOOD, "daisy/sneaky.png": makers.zip_of({"a/b.png": GOOD})}
            ),
            "archive_nested",
        ),
        (makers.zip_forged_size(os.urandom(200_000), declared=100), "archive_corrupt"),
        (makers.zip_forged_size(makers.png(), declared=10_000), "archive_corrupt"),
        (b"PK\x03\x04 this is not really a zip", "archive_invalid"),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "drive-letter",
        "backslash",
        "symlink",
        "encrypted",
        "nested-zip",
        "nested-zip-renamed",
        "forged-small-size",
        "forged-large-size",
        "not-a-zip",
    ],
)
def test_unsafe_archive_is_422_and_nothing_is_stored(
    client: TestClient, owner: Owner, settings: Settings, archive: bytes, code: str
) -> None:
    headers, ds = owner
    before = _state(client, headers, ds, settings)
    r = upload_archive(client, headers, ds, archive)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code
    assert _state(client, headers, ds, settings) == before


def test_ratio_bomb_is_413(client: TestClient, owner: Owner, settings: Settings) -> None:
    headers, ds = owner
    bomb = makers.zip_of(
        {"daisy/ok.png": GOOD, "daisy/zeros.png": b"\0" * (2 * 1024 * 1024)}, zipfile.ZIP_DEFLATED
    )
    assert len(bomb) < 10_000  # a 2 MiB entry in a few kilobytes: ratio ~ 1000
    before = _state(client, headers, ds, settings)
    r = upload_archive(client, headers, ds, bomb)
    assert r.status_code == 413 and r.json()["code"] == "archive_too_large"
    assert _state(client, headers, ds, settings) == before


def test_entry_count_bomb_is_413(client: TestClient, owner: Owner, settings: Settings) -> None:
    headers, ds = owner
    many = makers.zip_of({f"daisy/{i}.png": b"x" for i in range(settings.max_archive_entries + 1)})
    r = upload_archive(client, headers, ds, many)
    assert r.status_code == 413 and r.json()["code"] == "archive_too_large"


def test_total_size_over_cap_is_413(client: TestClient, owner: Owner, settings: Settings) -> None:
    headers, ds = owner
    piece = 512 * 1024
    n = settings.max_archive_bytes // piece + 1
    big = makers.zip_of({f"daisy/{i}.bin": os.urandom(piece) for i in range(n)})
    assert len(big) < settings.max_body_bytes
    r = upload_archive(client, headers, ds, big)
    assert r.status_code == 413 and r.json()["code"] == "archive_too_large"


LIMITS = ArchiveLimits(max_entries=10, max_total_bytes=4 * 1024 * 1024, max_ratio=100)


def test_bomb_reading_stops_at_the_cap_even_with_a_forged_small_header() -> None:
    """A 64 MiB entry that claims 100 bytes: the reader never holds more than the cap."""
    import tracemalloc

    bomb = makers.zip_forged_size(b"\0" * (64 * 1024 * 1024), declared=100)
    tracemalloc.start()
    with pytest.raises(Exception) as info:
        scan_archive(open_archive(io.BytesIO(bomb), LIMITS), LIMITS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert getattr(info.value, "status", None) in {413, 422}
    assert peak < 8 * 1024 * 1024


def test_bomb_with_honest_header_stops_at_the_ratio_cap() -> None:
    import tracemalloc

    bomb = makers.zip_of({"daisy/z.png": b"\0" * (64 * 1024 * 1024)}, zipfile.ZIP_DEFLATED)
    limits = ArchiveLimits(max_entries=10, max_total_bytes=1024**3, max_ratio=20)
    tracemalloc.start()
    with pytest.raises(PayloadTooLarge):
        scan_archive(open_archive(io.BytesIO(bomb), limits), limits)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * 1024 * 1024  # stopped near 20 x ~65 KB compressed, not at 64 MiB
