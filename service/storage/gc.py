"""Blob garbage collection (`headhub gc`): remove stored files that no row refers to.

Blobs are written before the rows that point at them are committed (a row never points at bytes
that are not there), so a failed or rolled-back upload or head registration can leave an
unreferenced blob behind. Deletes clean up after themselves; this sweep catches the rest.

Safety: only blobs last written more than `grace_s` ago are candidates, and the candidates are
listed *before* the references are read. A request still between writing its blob and committing
its row wrote that blob recently, so it is not a candidate; re-uploading content that is already
stored rewrites the file, which makes it recent again. Only the key spaces the service writes
(`images/`, `heads/`) are swept. The same holds on S3 (`service/storage/s3.py`): `scan` lists the
objects with their LastModified time, which a PUT of the same key renews.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.datasets.tables import DatasetImage
from service.db import session_scope
from service.heads.tables import HeadVersion
from service.storage.blobstore import BlobStore, image_key

__all__ = ["GcReport", "collect_garbage", "referenced_keys"]

log = logging.getLogger(__name__)
SWEPT_PREFIXES = ("images/", "heads/")


@dataclass(frozen=True)
class GcReport:
    candidates: int  # swept-prefix blobs older than the grace period
    unreferenced: int  # of those, the ones no row refers to
    removed: int  # deleted (0 on a dry run)
    bytes_freed: int
    dry_run: bool


def referenced_keys(session: Session) -> set[str]:
    """Every blob key a committed row points at: head version files and dataset images."""
    keys = set(session.scalars(select(HeadVersion.blob_key)))
    keys.update(image_key(sha) for sha in session.scalars(select(DatasetImage.sha256).distinct()))
    return keys


def collect_garbage(
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
    *,
    grace_s: float = 3600.0,
    dry_run: bool = False,
    now: float | None = None,
) -> GcReport:
    """Delete swept-prefix blobs older than `grace_s` that no row refers to."""
    cutoff = (time.time() if now is None else now) - grace_s
    candidates = [(k, n) for k, n in blobs.scan(cutoff) if k.startswith(SWEPT_PREFIXES)]
    with session_scope(session_factory) as session:
        refs = referenced_keys(session)
    orphans = [(k, n) for k, n in candidates if k not in refs]
    if not dry_run:
        for key, _ in orphans:
            blobs.delete(key)
        # An object store's multipart uploads left by a killed process hold storage invisibly.
        abort = getattr(blobs, "abort_stale_uploads", None)
        if abort is not None:
            aborted = abort(cutoff)
            if aborted:
                log.info("blob gc: aborted %d stale multipart uploads", aborted)
    freed = sum(n for _, n in orphans)
    log.info(
        "blob gc: %d candidates, %d unreferenced, %s %d bytes",
        len(candidates),
        len(orphans),
        "would free" if dry_run else "freed",
        freed,
    )
    return GcReport(
        candidates=len(candidates),
        unreferenced=len(orphans),
        removed=0 if dry_run else len(orphans),
        bytes_freed=freed,
        dry_run=dry_run,
    )
