"""Dataset logic: ownership, image ingestion, blob clean-up. Never commits."""

from __future__ import annotations

import base64
import binascii
import logging
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from extractor.imaging import ImageRejected, decode_image
from service.auth import Principal
from service.datasets import repository as repo
from service.datasets.schemas import DatasetOut, RejectedFile, UploadResult
from service.datasets.tables import Dataset, DatasetImage
from service.db import as_utc, session_scope, utcnow
from service.errors import (
    BadRequest,
    Conflict,
    HeadhubError,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
)
from service.storage.blobstore import BlobStore, image_key, sha256_hex
from service.tenants.repository import get_tenant_by_name

log = logging.getLogger(__name__)
MAX_FILENAME = 255


@dataclass(frozen=True)
class Candidate:
    """An uploaded file before validation: `filename` is the client's, for display only."""

    filename: str
    label: str
    data: bytes


@dataclass
class Ingest:
    added: int = 0
    duplicates: int = 0
    rejected: list[RejectedFile] = field(default_factory=list)

    def result(self) -> UploadResult:
        return UploadResult(added=self.added, duplicates=self.duplicates, rejected=self.rejected)


def display_filename(raw: str | None) -> str:
    """The client's name made safe to echo back and store as text (never as a path)."""
    name = "".join(ch for ch in (raw or "") if unicodedata.category(ch)[0] != "C")
    return name[:MAX_FILENAME] or "(unnamed)"


def owner_tenant_id(session: Session, principal: Principal, tenant: str | None) -> str:
    """Tenants act on their own datasets; the admin names the tenant it acts for."""
    if not principal.is_admin:
        assert principal.tenant_id is not None
        if tenant is not None and tenant != principal.tenant_name:
            raise NotFound(f"No tenant named '{tenant}'.", code="tenant_not_found")
        return principal.tenant_id
    if tenant is None:
        raise BadRequest(
            "An admin key must name the tenant with ?tenant=<name>.", code="tenant_required"
        )
    found = get_tenant_by_name(session, tenant)
    if found is None:
        raise NotFound(f"No tenant named '{tenant}'.", code="tenant_not_found")
    return found.id


def create_dataset(session: Session, tenant_id: str, name: str, description: str) -> Dataset:
    if repo.get_dataset_by_name(session, tenant_id, name) is not None:
        raise Conflict(f"A dataset named '{name}' already exists.", code="dataset_exists")
    dataset = Dataset(tenant_id=tenant_id, name=name, description=description)
    session.add(dataset)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(f"A dataset named '{name}' already exists.", code="dataset_exists") from None
    return dataset


def get_dataset(session: Session, principal: Principal, dataset_id: str) -> Dataset:
    """Another tenant's dataset is a 404, exactly like a missing one."""
    dataset = repo.get_dataset(
        session, dataset_id, None if principal.is_admin else principal.tenant_id
    )
    if dataset is None:
        raise NotFound(f"No dataset '{dataset_id}'.", code="dataset_not_found")
    return dataset


def describe(
    session: Session, datasets: Sequence[Dataset], extractor_id: str | None
) -> list[DatasetOut]:
    ids = [d.id for d in datasets]
    counts = repo.label_counts(session, ids)
    ready = repo.features_ready(session, ids, extractor_id) if extractor_id else {}
    return [
        DatasetOut(
            id=d.id,
            name=d.name,
            description=d.description,
            created_at=as_utc(d.created_at),
            updated_at=as_utc(d.updated_at),
            image_count=sum(counts[d.id].values()),
            label_counts=counts[d.id],
            extractor_id=extractor_id,
            features_ready=ready.get(d.id) if extractor_id else None,
        )
        for d in datasets
    ]


def encode_cursor(dataset: Dataset) -> str:
    raw = f"{as_utc(dataset.created_at).isoformat()}|{dataset.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, last_id = raw.split("|", 1)
        return datetime.fromisoformat(at), last_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest(
            "The cursor is not one this API returned.", code="invalid_cursor"
        ) from None


def delete_dataset(session: Session, principal: Principal, dataset_id: str) -> list[str]:
    """Delete the dataset and its image rows; -> the SHA-256s whose blobs may now be orphaned."""
    dataset = get_dataset(session, principal, dataset_id)
    shas = repo.dataset_shas(session, dataset.id)
    session.delete(dataset)
    session.flush()
    return shas


def delete_image(session: Session, principal: Principal, dataset_id: str, sha256: str) -> None:
    dataset = get_dataset(session, principal, dataset_id)
    image = repo.get_image(session, dataset.id, sha256)
    if image is None:
        raise NotFound(f"No image {sha256} in dataset '{dataset_id}'.", code="image_not_found")
    session.delete(image)
    dataset.updated_at = utcnow()
    session.flush()


def collect_blobs(session_factory: sessionmaker[Session], blobs: BlobStore, shas: list[str]) -> int:
    """After a delete has committed: drop blobs and features no dataset of any tenant holds."""
    removed = 0
    try:
        with session_scope(session_factory) as session:
            orphans = repo.unreferenced(session, shas)
            repo.delete_features(session, orphans)
            for sha in orphans:
                blobs.delete(image_key(sha))
                removed += 1
    except Exception as exc:  # best effort: an orphan blob is wasted space, not wrong data
        log.warning("blob clean-up after dataset delete failed: %s", exc)
    return removed


def _as_error(exc: ImageRejected) -> HeadhubError:
    detail = f"'{display_filename(exc.filename)}' was rejected: {exc.reason}"
    kind = {413: PayloadTooLarge, 415: UnsupportedMediaType}.get(exc.status, Unprocessable)
    return kind(detail, code=exc.code)


def ingest(
    session: Session,
    blobs: BlobStore,
    dataset: Dataset,
    candidates: Iterable[Candidate],
    *,
    max_pixels: int,
    max_tenant_images: int,
    single_file: bool,
) -> Ingest:
    """Validate, store and record each candidate; bad ones are listed, good ones kept.

    `single_file`: the request carried exactly one file, so its rejection is the request's
    failure (413/415/422 naming the file) rather than a 200 with an empty result.
    """
    out = Ingest()
    stored = repo.tenant_image_count(session, dataset.tenant_id)
    if stored >= max_tenant_images:
        raise Conflict(
            f"This tenant already stores {stored} images, the limit is {max_tenant_images}.",
            code="image_quota_exceeded",
        )
    for c in candidates:
        name = display_filename(c.filename)
        sha = sha256_hex(c.data)
        if repo.get_image(session, dataset.id, sha) is not None:
            out.duplicates += 1  # validated when it was first added: no need to decode again
            continue
        try:
            img = decode_image(c.data, name, max_pixels=max_pixels)
        except ImageRejected as exc:
            if single_file:
                raise _as_error(exc) from None
            out.rejected.append(RejectedFile(filename=name, reason=exc.reason, code=exc.code))
            continue
        if stored + out.added >= max_tenant_images:
            out.rejected.append(
                RejectedFile(
                    filename=name,
                    reason=f"the tenant's limit of {max_tenant_images} images is reached",
                    code="image_quota_exceeded",
                )
            )
            continue
        # The blob first: a row never points at bytes that are not there.
        blobs.put(image_key(sha), c.data)
        row = DatasetImage(
            dataset_id=dataset.id,
            sha256=sha,
            tenant_id=dataset.tenant_id,
            label=c.label,
            filename=name,
            size_bytes=len(c.data),
            width=img.width,
            height=img.height,
        )
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            if repo.get_image(session, dataset.id, sha) is None:  # the dataset was deleted
                raise NotFound(f"No dataset '{dataset.id}'.", code="dataset_not_found") from None
            out.duplicates += 1  # a concurrent upload of the same image won the race
            continue
        out.added += 1
    if out.added:
        dataset.updated_at = utcnow()
    return out
