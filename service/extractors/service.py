"""Extractor registry logic: registration, the lifecycle (default, deprecate, retire), what is
in use, and the registry's view for prediction and training. Never commits.

Lifecycle (docs/architecture.md, "Extractor lifecycle"): register (active) -> default ->
heads moved -> deprecated (still answers, with Deprecation and Sunset headers) -> retired (410;
refused while an alias or an implicit version still resolves to it). The default can be neither
deprecated nor retired: another one becomes the default first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from extractor.catalog import describe_checkpoint
from extractor.checkpoint import CheckpointError, checkpoint_id
from service.db import as_utc, utcnow
from service.errors import BadRequest, Conflict, Gone, NotFound, Unprocessable
from service.extractors import repository as repo
from service.extractors.schemas import (
    BulkMoveOut,
    ExtractorDetail,
    ExtractorList,
    ExtractorOut,
    ExtractorUpdate,
)
from service.extractors.tables import Extractor, ExtractorMove, ExtractorStatus
from service.jobs.tables import JobStatus
from service.storage.blobstore import BlobStore

log = logging.getLogger("headhub.extractors")

ACTIVE, DEPRECATED, RETIRED = (s.value for s in ExtractorStatus)
AUTO_NOTE = "registered automatically: the default checkpoint of the extractor processes"


def blob_key_for(extractor_id: str) -> str:
    return f"extractors/{extractor_id[:2]}/{extractor_id}.safetensors"


def not_found(extractor_id: str) -> NotFound:
    return NotFound(
        f"No extractor '{extractor_id[:80]}' is registered.", code="extractor_not_found"
    )


def get_or_404(session: Session, extractor_id: str) -> Extractor:
    found = repo.get(session, extractor_id)
    if found is None:
        raise not_found(extractor_id)
    return found


# --- views ----------------------------------------------------------------------------------


def to_out(ext: Extractor, counts: dict[str, tuple[int, int]]) -> ExtractorOut:
    versions, aliases = counts.get(ext.id, (0, 0))
    return ExtractorOut(
        id=ext.id,
        architecture=ext.architecture,
        input_size=list(ext.input_size),
        feature_dim=ext.feature_dim,
        parameters=ext.parameters,
        size_bytes=ext.size_bytes,
        bits_per_weight=ext.bits_per_weight,
        status=ext.status,  # type: ignore[arg-type]
        default=ext.is_default,
        sunset=ext.sunset,
        deprecated_at=ext.deprecated_at,
        note=ext.note,
        created_at=ext.created_at,
        pinned_versions=versions,
        pinned_aliases=aliases,
        preprocessing=ext.preprocessing or {},
    )


def list_out(session: Session, limit: int = 50, cursor: str | None = None) -> ExtractorList:
    """A page of the registry, default first; `cursor` is the `next_cursor` of the page before
    (a position: the registry is a handful of rows)."""
    start = 0
    if cursor:
        if not cursor.isdigit() or len(cursor) > 9:
            raise BadRequest(
                "cursor must be a value returned as next_cursor.", code="invalid_cursor"
            )
        start = int(cursor)
    rows = repo.list_all(session)
    page = rows[start : start + limit]
    counts = repo.pinned_counts(session)
    more = start + limit < len(rows)
    return ExtractorList(
        items=[to_out(e, counts) for e in page], next_cursor=str(start + limit) if more else None
    )


def detail(session: Session, ext: Extractor) -> ExtractorDetail:
    base = to_out(ext, repo.pinned_counts(session))
    move = repo.latest_move(session, ext.id)
    return ExtractorDetail(
        **base.model_dump(), bulk_move=None if move is None else move_progress(session, move)
    )


def move_progress(session: Session, move: ExtractorMove) -> BulkMoveOut:
    counts = repo.move_job_counts(session, move.id)
    moved = counts.get(JobStatus.succeeded.value, 0)
    failed = counts.get(JobStatus.failed.value, 0) + counts.get(JobStatus.cancelled.value, 0)
    left = counts.get(JobStatus.queued.value, 0) + counts.get(JobStatus.running.value, 0)
    return BulkMoveOut(
        id=move.id,
        to=move.to_extractor_id,
        promote_if_not_worse=move.promote_if_not_worse,
        total=move.total,
        moved=moved,
        failed=failed,
        left=left,
        failures=[
            {"head": f"{owner}/{name}", "error": error}
            for owner, name, error in repo.failed_moves(session, move.id)
        ],
        created_at=move.created_at,
    )


# --- registration ---------------------------------------------------------------------------


def _row(info: dict[str, Any], note: str) -> Extractor:
    return Extractor(
        id=str(info["id"]),
        architecture=str(info["architecture"]),
        input_size=[int(x) for x in info["input_size"]],
        feature_dim=int(info["feature_dim"]),
        parameters=int(info["parameters"]),
        size_bytes=int(info["size_bytes"]),
        bits_per_weight=float(info["bits_per_weight"]),
        preprocessing=dict(info.get("preprocessing") or {}),
        provenance=dict(info.get("provenance") or {}),
        status=ACTIVE,
        is_default=False,
        note=note,
    )


def register(
    session: Session, blobs: BlobStore, extractor_id: str, note: str, data: bytes
) -> Extractor:
    """Register the checkpoint an extractor process served for `extractor_id` as `data`.

    The bytes must hash to the id (else 422 `checkpoint_id_mismatch`); a verified copy goes to
    the blob store, for downloads that do not depend on the extractor processes.
    """
    if repo.get(session, extractor_id) is not None:
        raise Conflict(f"Extractor {extractor_id} is already registered.", code="extractor_exists")
    actual = checkpoint_id(data)
    if actual != extractor_id:
        raise Unprocessable(
            f"The checkpoint the extractor processes serve as {extractor_id} has SHA-256 "
            f"{actual}; an extractor's id must be the SHA-256 of its file.",
            code="checkpoint_id_mismatch",
        )
    try:
        info = describe_checkpoint(data)
    except CheckpointError as exc:
        raise Unprocessable(
            f"Extractor {extractor_id} is not a headhub checkpoint: {exc}",
            code="invalid_checkpoint",
        ) from exc
    key = blob_key_for(extractor_id)
    blobs.put(key, data)
    ext = _row(info, note)
    ext.blob_key = key
    session.add(ext)
    session.flush()
    return ext


def ensure_default(session: Session, info: dict[str, Any]) -> Extractor:
    """Register the extractor processes' default checkpoint as the default when the registry
    has none (first start after an upgrade, or a fresh install); otherwise change nothing."""
    current = repo.get_default(session)
    if current is not None:
        return current
    repo.lock_registry(session)
    current = repo.get_default(session)
    if current is not None:
        return current
    ext = repo.get(session, str(info["id"]))
    if ext is None:
        ext = _row(info, AUTO_NOTE)
        session.add(ext)
    if ext.status != ACTIVE:  # an operator retired it: never bring it back silently
        return ext
    ext.is_default = True
    session.flush()
    log.info("registered the default extractor %s", ext.id)
    return ext


# --- lifecycle ------------------------------------------------------------------------------


def in_use_error(extractor_id: str, uses: Sequence[repo.PinnedUse]) -> Conflict:
    heads = [{"head": f"{u.owner}/{u.name}", "version": u.version, "alias": u.alias} for u in uses]
    names = sorted({f"{u.owner}/{u.name}" for u in uses})
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return Conflict(
        f"Extractor {extractor_id[:12]}... is still in use by {len(names)} head(s): {shown}. "
        "Move them (POST /v1/extractors/{id}/moves) and repoint their aliases first.",
        code="extractor_in_use",
        extra={"heads": heads},
    )


def update(session: Session, ext: Extractor, body: ExtractorUpdate) -> Extractor:
    """PATCH: `default`, `status` (+ `sunset`), `note`; the lifecycle rules above."""
    if body.default and body.status not in (None, ACTIVE):
        raise Unprocessable(
            "The default extractor must be active; send `default` and `status` apart.",
            code="invalid_extractor_update",
        )
    status = body.status
    if body.sunset is not None and (status or ext.status) != DEPRECATED:
        raise Unprocessable(
            "`sunset` goes with `status: deprecated`.", code="invalid_extractor_update"
        )
    now = utcnow()
    if body.default:
        if ext.status != ACTIVE:
            raise Conflict(
                f"Extractor {ext.id[:12]}... is {ext.status}; only an active one can be the "
                "default.",
                code="extractor_not_active",
            )
        repo.lock_registry(session)
        if not ext.is_default:
            repo.clear_default(session)
            session.flush()
            ext.is_default = True
    if status is not None and status != ACTIVE and ext.is_default:
        raise Conflict(
            f"Extractor {ext.id[:12]}... is the default; make another one the default first.",
            code="extractor_is_default",
        )
    if status == RETIRED and ext.status != RETIRED:
        uses = repo.uses(session, ext.id)
        if uses:
            raise in_use_error(ext.id, uses)
        ext.retired_at = now
    if status == DEPRECATED:
        ext.deprecated_at = as_utc(ext.deprecated_at) if ext.deprecated_at else now
    if status == ACTIVE:
        ext.deprecated_at = ext.retired_at = ext.sunset = None
    if status is not None:
        ext.status = status
    if body.sunset is not None:
        ext.sunset = body.sunset
    if body.note is not None:
        ext.note = body.note
    ext.updated_at = now
    session.flush()
    return ext


# --- what training and prediction ask of the registry ---------------------------------------


def default_id(session: Session) -> str | None:
    found = repo.get_default(session)
    return None if found is None else found.id


def for_training(session: Session, extractor_id: str | None) -> str | None:
    """The extractor a new job trains on: the one asked for (registered and not retired), else
    the default (None while the registry has none: the replicas' default is used)."""
    if extractor_id is None:
        return default_id(session)
    ext = get_or_404(session, extractor_id)
    if ext.status == RETIRED:
        raise Conflict(
            f"Extractor {extractor_id[:12]}... is retired; train on an active one.",
            code="extractor_retired",
        )
    return ext.id


def retired_error(session: Session, head_id: str, ref: str, extractor_id: str) -> Gone:
    """410 for a head version on a retired extractor, naming the head's newest version on an
    active extractor, if it has one."""
    replacement = repo.newest_version_on(session, head_id, repo.active_ids(session))
    owner_name = ref.rsplit(":", 1)[0]
    newer = None if replacement is None else f"{owner_name}:{replacement.version}"
    hint = (
        f" Use {newer}, on an active extractor."
        if newer
        else " It has no version on an active extractor; move it."
    )
    return Gone(
        f"Head '{ref}' was trained on extractor {extractor_id[:12]}..., which is retired.{hint}",
        code="extractor_retired",
        extra={"extractor_id": extractor_id, "replacement": newer},
    )


def deprecation_headers(deprecated: Sequence[Extractor]) -> dict[str, str]:
    """`Deprecation` (RFC 9745: `@<unix seconds>` of when it was deprecated) and `Sunset`
    (RFC 8594: an HTTP-date), for the earliest of the deprecated extractors a response used."""
    if not deprecated:
        return {}
    since = min(as_utc(e.deprecated_at or e.updated_at) for e in deprecated)
    headers = {"Deprecation": f"@{int(since.timestamp())}"}
    sunsets = [as_utc(e.sunset) for e in deprecated if e.sunset is not None]
    if sunsets:
        headers["Sunset"] = _http_date(min(sunsets))
    return headers


def _http_date(when: datetime) -> str:
    from datetime import UTC
    from email.utils import format_datetime

    # usegmt wants exactly datetime.UTC; PostgreSQL hands back its own UTC tzinfo
    return format_datetime(as_utc(when).astimezone(UTC), usegmt=True)


def gate(
    session: Session, heads: Sequence[tuple[str, str, str]]
) -> tuple[dict[str, Extractor], list[Extractor]]:
    """Before prediction: (head id, resolved ref, extractor id) of each head -> 410 for the first
    on a retired extractor; else the registry rows of their extractors and the deprecated ones."""
    rows = repo.get_many(session, sorted({e for _, _, e in heads}))
    for head_id, ref, extractor_id in heads:
        ext = rows.get(extractor_id)
        if ext is not None and ext.status == RETIRED:
            raise retired_error(session, head_id, ref, extractor_id)
    deprecated = [e for e in rows.values() if e.status == DEPRECATED]
    return rows, deprecated
