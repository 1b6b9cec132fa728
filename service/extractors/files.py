"""The extractor directory on the machine that runs `headhub up`: registered checkpoints whose
file is missing there are written back from the blob store's verified copies, so `headhub up`
serves every registered extractor, not only its default."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from extractor.catalog import checkpoint_file_name
from extractor.checkpoint import checkpoint_id
from service.db import make_engine, make_sessionmaker, session_scope
from service.extractors.tables import Extractor
from service.settings import Settings
from service.storage.blobstore import BlobNotFound, make_blob_store


def restore_registered_checkpoints(settings: Settings, directory: Path) -> int:
    """Write `<id>.safetensors` for every registered, not retired extractor that has a copy in
    the blob store and no usable file in `directory` (none, or one whose bytes do not hash to
    its name: the extractor would refuse it); returns how many were written."""
    directory.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            wanted = [
                (e.id, e.blob_key)
                for e in session.scalars(select(Extractor).where(Extractor.status != "retired"))
                if e.blob_key
            ]
    finally:
        engine.dispose()
    blobs = make_blob_store(settings)
    written = 0
    for extractor_id, key in wanted:
        target = directory / checkpoint_file_name(extractor_id)
        if target.is_file() and checkpoint_id(target.read_bytes()) == extractor_id:
            continue
        try:
            data = blobs.get(key)
        except BlobNotFound:
            continue
        if checkpoint_id(data) != extractor_id:  # never write a file under a name it lacks
            continue
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
        written += 1
    return written
