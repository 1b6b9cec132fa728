"""The multipart side of uploads: bounded form parsing, the two request shapes, their OpenAPI.

The form is parsed here rather than by FastAPI's `File()` parameters so the part-count and
field-size limits come from the settings and their errors get our codes (docs/architecture.md,
"Untrusted input").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.datasets import archive as zips
from service.datasets import repository as repo
from service.datasets import service
from service.datasets.features import BackgroundFeaturizer
from service.datasets.labels import InvalidLabel, normalize_label
from service.datasets.schemas import RejectedFile
from service.datasets.tables import Dataset
from service.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from service.settings import Settings
from service.storage.blobstore import BlobStore

MAX_FORM_FIELDS = 8  # the form has one text field (`label`); a few more are tolerated
_FIELDS = {"label", "files", "archive"}
_EXTRACTOR_ID_TTL_S = 60.0
_EXTRACTOR_RETRY_S = 5.0
_EXTRACTOR_INFO_TIMEOUT_S = 2.0


@dataclass
class Upload:
    form: FormData
    label: str | None
    files: list[UploadFile]
    archive: UploadFile | None

    async def close(self) -> None:
        await self.form.close()


async def read_upload(request: Request, settings: Settings) -> Upload:
    """Parse and check the form: either `label` + `files`, or one `archive`."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType("Send images as multipart/form-data.", code="multipart_required")
    try:
        form = await request.form(
            max_files=settings.max_files_per_request,
            max_fields=MAX_FORM_FIELDS,
            max_part_size=settings.max_field_bytes,
        )
    except StarletteHTTPException as exc:
        message = str(exc.detail)
        if "maximum size" in message:
            raise PayloadTooLarge(
                f"A text field is larger than {settings.max_field_bytes} bytes.",
                code="field_too_large",
            ) from None
        if message.startswith("Too many"):
            raise BadRequest(
                f"{message} At most {settings.max_files_per_request} files and "
                f"{MAX_FORM_FIELDS} text fields per request.",
                code="too_many_parts",
            ) from None
        raise BadRequest(
            f"The multipart body is malformed: {message}", code="invalid_multipart"
        ) from None
    try:
        return _shape(form)
    except BaseException:
        await form.close()
        raise


def _shape(form: FormData) -> Upload:
    unknown = set(form.keys()) - _FIELDS
    if unknown:
        raise Unprocessable(
            f"Unknown form field(s) {sorted(unknown)}; send `label` + `files`, or `archive`.",
            code="unknown_field",
        )
    files = form.getlist("files")
    archives = form.getlist("archive")
    labels = form.getlist("label")
    if any(not isinstance(f, UploadFile) for f in [*files, *archives]):
        raise Unprocessable("`files` and `archive` must be file parts.", code="not_a_file")
    if len(labels) > 1 or any(not isinstance(v, str) for v in labels):
        raise Unprocessable("Send one `label` text field.", code="invalid_label")
    if archives:
        if files or labels or len(archives) > 1:
            raise Unprocessable(
                "Send one `archive` alone (its folders are the labels), or `label` + `files`.",
                code="invalid_upload",
            )
        return Upload(form, None, [], archives[0])  # type: ignore[arg-type]
    if not files:
        raise Unprocessable("Send `label` + `files`, or one `archive`.", code="no_files")
    if not labels:
        raise Unprocessable("`files` need a `label` field.", code="label_required")
    try:
        label = normalize_label(str(labels[0]))
    except InvalidLabel as exc:
        raise Unprocessable(f"Invalid label: {exc}.", code="invalid_label") from None
    return Upload(form, label, files, None)  # type: ignore[arg-type]


def _file_candidates(upload: Upload) -> Iterator[service.Candidate]:
    for f in upload.files:
        f.file.seek(0)
        yield service.Candidate(f.filename or "", upload.label or "", f.file.read())


def run_upload(
    session: Session, blobs: BlobStore, dataset: Dataset, upload: Upload, settings: Settings
) -> service.Ingest:
    """Blocking part of an upload (zip reading, image decoding, blob writes): run in a thread.

    Duplicates are looked up in short read transactions, images are decoded and stored with no
    transaction open, and the rows are written at the end in one short transaction under the
    tenant's lock (`service.record`), where the caps on images, bytes and labels are enforced.
    """
    limits = service.IngestLimits.from_settings(settings)
    out = service.Ingest()

    def known(shas: list[str]) -> set[str]:
        try:
            return repo.existing_shas(session, dataset.id, shas)
        finally:
            session.commit()  # a read: end it, so no lock is held while images decode

    if upload.archive is None:
        service.check_labels(session, dataset, [upload.label or ""], limits)
        session.commit()
        prepared = service.prepare(
            blobs,
            _file_candidates(upload),
            known=known,
            limits=limits,
            single_file=len(upload.files) == 1,
            out=out,
        )
        return service.record(session, dataset, prepared, limits=limits, out=out)
    archive_limits = zips.ArchiveLimits(
        max_entries=settings.max_archive_entries,
        max_total_bytes=settings.max_archive_bytes,
        max_ratio=settings.max_archive_ratio,
        max_entry_bytes=settings.max_image_bytes,
    )
    fh = upload.archive.file
    fh.seek(0)
    zf = zips.open_archive(fh, archive_limits)
    with zf:
        plan = zips.scan_archive(zf, archive_limits)  # raises before anything is stored
        service.check_labels(session, dataset, {e.label for e in plan.entries}, limits)
        session.commit()
        members = (
            service.Candidate(entry.display_name, entry.label, data)
            for entry, data in zips.iter_members(zf, plan, archive_limits)
        )
        prepared = service.prepare(
            blobs, members, known=known, limits=limits, single_file=False, out=out
        )
    service.record(session, dataset, prepared, limits=limits, out=out)
    out.rejected += [
        RejectedFile(filename=s.display_name, reason=s.reason, code=s.code) for s in plan.skipped
    ]
    return out


async def current_extractor_id(request: Request) -> str | None:
    """The serving extractor's id, cached for a minute; None while it cannot be reached.

    Dataset pages show `features_ready` for it, and must not hang when the extractor is down.
    """
    state = request.app.state
    cached: tuple[str | None, float] | None = getattr(state, "dataset_extractor_id", None)
    now = time.monotonic()
    if cached is not None and now < cached[1]:
        return cached[0]
    client = getattr(state, "extractor", None)
    known = cached[0] if cached else None
    if client is None:
        return known
    try:
        info = await asyncio.wait_for(client.info(), timeout=_EXTRACTOR_INFO_TIMEOUT_S)
        found: str | None = str(info["id"])
    except Exception:
        found = None
    value = found or known
    state.dataset_extractor_id = (
        value,
        now + (_EXTRACTOR_ID_TTL_S if found else _EXTRACTOR_RETRY_S),
    )
    return value


def featurizer(request: Request) -> BackgroundFeaturizer | None:
    """The app's background featurizer, made on first use (needs the extractor client)."""
    state = request.app.state
    existing = getattr(state, "dataset_featurizer", None)
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    client = getattr(state, "extractor", None)
    if client is None or not hasattr(client, "features_sync"):
        return None
    state.dataset_featurizer = BackgroundFeaturizer(state.sessionmaker, client, state.blobs)
    return state.dataset_featurizer  # type: ignore[no-any-return]


UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Too many parts, or a malformed multipart body (`too_many_parts`)."},
    404: {"description": "No such dataset for this tenant (`dataset_not_found`)."},
    409: {"description": "The tenant's image cap is reached (`image_quota_exceeded`)."},
    413: {
        "description": "Body over the limit, a zip bomb, an oversized text field, or the "
        "only file declares too many pixels."
    },
    415: {"description": "Not multipart, or the only file's format is not accepted."},
    422: {
        "description": "An unsafe archive (refused whole), a bad form, or the only file is "
        "truncated or not an image."
    },
}
UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "label": {
                            "type": "string",
                            "example": "daisy",
                            "description": "The label of every `files` part.",
                        },
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "archive": {
                            "type": "string",
                            "format": "binary",
                            "description": "A zip: label/image.jpg entries.",
                        },
                    },
                },
                "encoding": {
                    "files": {"contentType": "image/*"},
                    "archive": {"contentType": "application/zip"},
                },
            }
        },
    }
}
