"""`headhub up` writes registered checkpoints back into the extractor directory from the blob
store's verified copies (docs/architecture.md, "Several extractors side by side": where
checkpoint files live), on SQLite and PostgreSQL.

Checkpoints are registered as `POST /v1/extractors` does (`service.extractors.service.register`:
the bytes checked against the id, a copy put in a real local blob store); the directory is a
temp directory, as `<data-dir>/extractors` is for `headhub up`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.db import make_engine, make_sessionmaker, session_scope
from service.extractors import service
from service.extractors.files import restore_registered_checkpoints
from service.settings import Settings
from service.storage.blobstore import BlobStore, make_blob_store
from tests.conftest import make_settings
from tests.fixtures.extractor import make_tiny_checkpoint


@dataclass(frozen=True)
class Registry:
    settings: Settings
    blobs: BlobStore
    files: dict[str, bytes]  # id -> checkpoint bytes, of the active extractors
    retired_id: str


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def registry(
    db_url: str, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path
) -> Registry:
    """Two active extractors and a retired one, each with its verified copy in the blob store."""
    root = tmp_path_factory.mktemp("registered")
    settings = make_settings(root / "data", db_url)
    blobs = make_blob_store(settings)
    paths = [
        tiny_checkpoint,
        make_tiny_checkpoint(root / "second.safetensors", seed=5),
        make_tiny_checkpoint(root / "retired.safetensors", seed=6),
    ]
    data = [p.read_bytes() for p in paths]
    ids = [hashlib.sha256(d).hexdigest() for d in data]
    engine = make_engine(db_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            for ident, body in zip(ids, data, strict=True):
                service.register(session, blobs, ident, "test", body)
            session.flush()
            service.get_or_404(session, ids[2]).status = service.RETIRED
    finally:
        engine.dispose()
    return Registry(settings, blobs, dict(zip(ids[:2], data[:2], strict=True)), ids[2])


def test_missing_checkpoints_come_back_with_their_own_sha256(
    registry: Registry, tmp_path: Path
) -> None:
    directory = tmp_path / "extractors"  # not there yet: `headhub up` on a fresh data dir
    assert restore_registered_checkpoints(registry.settings, directory) == 2
    restored = {p.name for p in directory.iterdir()}
    assert restored == {f"{ident}.safetensors" for ident in registry.files}  # not the retired
    for ident in registry.files:
        assert _sha256(directory / f"{ident}.safetensors") == ident

    assert restore_registered_checkpoints(registry.settings, directory) == 0  # all there
    gone = next(iter(registry.files))
    (directory / f"{gone}.safetensors").unlink()
    assert restore_registered_checkpoints(registry.settings, directory) == 1
    assert (directory / f"{gone}.safetensors").read_bytes() == registry.files[gone]
    assert {p.name for p in directory.iterdir()} == restored  # no temp file left behind


def test_a_corrupt_or_foreign_file_under_a_registered_id_is_replaced(
    registry: Registry, tmp_path: Path
) -> None:
    """The extractor refuses a file whose bytes are not its name's: it counts as missing."""
    corrupt, foreign = registry.files
    (tmp_path / f"{corrupt}.safetensors").write_bytes(registry.files[corrupt][:-10])
    (tmp_path / f"{foreign}.safetensors").write_bytes(registry.files[corrupt])
    assert restore_registered_checkpoints(registry.settings, tmp_path) == 2
    for ident in registry.files:
        assert _sha256(tmp_path / f"{ident}.safetensors") == ident


def test_a_blob_copy_that_is_not_its_id_is_never_written(
    registry: Registry, tmp_path: Path
) -> None:
    """A tampered (or vanished) copy leaves the directory without that file, never with a file
    under a name it lacks; once the copies are back, so are the files."""
    tampered, vanished = registry.files
    keys = {ident: service.blob_key_for(ident) for ident in registry.files}
    registry.blobs.put(keys[tampered], registry.files[vanished])
    registry.blobs.delete(keys[vanished])
    try:
        assert restore_registered_checkpoints(registry.settings, tmp_path) == 0
        assert list(tmp_path.iterdir()) == []
    finally:
        for ident, key in keys.items():
            registry.blobs.put(key, registry.files[ident])
    assert restore_registered_checkpoints(registry.settings, tmp_path) == 2
