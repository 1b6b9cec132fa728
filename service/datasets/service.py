"""Dataset logic: ownership, image ingestion, blob clean-up. Never commits."""

from __future__ import annotations

import base64
import binascii
import logging
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
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
from service.settings import Settings
from service.storage.blobstore import BlobStore, image_key, sha256_hex
from service.tenants.repository import get_tenant_by_name, lock_tenant

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


def create_dataset(
    session: Session, tenant_id: str, name: str, description: str, *, max_datasets: int
) -> Dataset:
    lock_tenant(session, tenant_id)  # the cap holds when creations race
    if repo.count_datasets(session, tenant_id) >= max_datasets:
        raise Conflict(
            f"This tenant has {max_datasets} datasets, the limit; delete one first.",
            code="dataset_quota_exceeded",
        )
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


def get_image(
    session: Session, principal: Principal, dataset_id: str, sha256: str
) -> tuple[Dataset, DatasetImage]:
    """The dataset (404 as `get_dataset`) and one of its images (404 `image_not_found`)."""
    dataset = get_dataset(session, principal, dataset_id)
    image = repo.get_image(session, dataset.id, sha256)
    if image is None:
        raise NotFound(f"No image {sha256} in dataset '{dataset_id}'.", code="image_not_found")
    return dataset, image


def delete_image(session: Session, principal: Principal, dataset_id: str, sha256: str) -> None:
    dataset, image = get_image(session, principal, dataset_id, sha256)
    session.delete(image)
    dataset.updated_at = utcnow()
    session.flush()


def forget_features(session_factory: sessionmaker[Session], shas: list[str]) -> int:
    """After a delete has committed: drop the cached features of images no dataset of any tenant
    holds. Their bytes stay until `headhub gc` finds them unreferenced *and* older than its grace
    period: deleting them here raced another tenant's upload of the same bytes, whose blob was
    written but whose row was not committed yet (docs/threats.md)."""
    try:
        with session_scope(session_factory) as session:
            orphans = repo.unreferenced(session, shas)
            repo.delete_features(session, orphans)
            repo.delete_stale_claims(session, shas)
            return len(orphans)
    except Exception as exc:  # best effort: a stale feature row is wasted space, not wrong data
        log.warning("feature clean-up after a delete failed: %s", exc)
        return 0


def _as_error(exc: ImageRejected) -> HeadhubError:
    detail = f"'{display_filename(exc.filename)}' was rejected: {exc.reason}"
    kind = {413: PayloadTooLarge, 415: UnsupportedMediaType}.get(exc.status, Unprocessable)
    return kind(detail, code=exc.code)


@dataclass(frozen=True)
class IngestLimits:
    """What one tenant may store (docs/threats.md); from the settings."""

    max_pixels: int
    max_image_bytes: int
    max_tenant_images: int
    max_tenant_bytes: int
    max_labels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestLimits:
        return cls(
            max_pixels=settings.max_image_pixels,
            max_image_bytes=settings.max_image_bytes,
            max_tenant_images=settings.max_images_per_tenant,
            max_tenant_bytes=settings.max_bytes_per_tenant,
            max_labels=settings.max_labels_per_dataset,
        )


@dataclass(frozen=True)
class Prepared:
    """A validated image whose bytes are stored; its row is not written yet."""

    sha256: str
    label: str
    filename: str
    size_bytes: int
    width: int
    height: int


def check_room(session: Session, dataset: Dataset, limits: IngestLimits) -> None:
    """409 before any work (before the body is even read) when the tenant is at a cap already."""
    images, nbytes = repo.tenant_usage(session, dataset.tenant_id)
    if images >= limits.max_tenant_images:
        raise _image_quota(images, limits)
    if nbytes >= limits.max_tenant_bytes:
        raise _byte_quota(nbytes, limits)


def _image_quota(images: int, limits: IngestLimits) -> Conflict:
    return Conflict(
        f"This tenant already stores {images} images, the limit is {limits.max_tenant_images}.",
        code="image_quota_exceeded",
    )


def _byte_quota(nbytes: int, limits: IngestLimits) -> Conflict:
    return Conflict(
        f"This tenant already stores {nbytes} bytes of images, the limit is "
        f"{limits.max_tenant_bytes}.",
        code="byte_quota_exceeded",
    )


def check_labels(
    session: Session, dataset: Dataset, labels: Iterable[str], limits: IngestLimits
) -> None:
    """409 `too_many_labels` when these labels would take the dataset past the cap (a job's
    metrics hold a labels x labels matrix); checked before any image is decoded."""
    have = repo.dataset_labels(session, dataset.id)
    total = len(have | set(labels))
    if total > limits.max_labels:
        raise Conflict(
            f"The dataset would have {total} labels; at most {limits.max_labels} are allowed.",
            code="too_many_labels",
        )


def prepare(
    blobs: BlobStore,
    candidates: Iterable[Candidate],
    *,
    known: Callable[[list[str]], set[str]],
    limits: IngestLimits,
    single_file: bool,
    out: Ingest,
) -> list[Prepared]:
    """Validate and store the bytes of each new candidate; no database lock is held here.

    `known(shas)` -> those the dataset already holds (a short read of the caller's): they count
    as duplicates and are not decoded again. Bad files are listed in `out.rejected`; with
    `single_file` the one file's rejection is the request's failure (413/415/422 naming it).
    """
    prepared: list[Prepared] = []
    seen: set[str] = set()
    for chunk in _chunks(candidates):
        shas = [sha256_hex(c.data) for c in chunk]
        held = known(shas)
        for c, sha in zip(chunk, shas, strict=True):
            name = display_filename(c.filename)
            if sha in held or sha in seen:
                out.duplicates += 1  # validated when it was first added: no need to decode
                continue
            try:
                if len(c.data) > limits.max_image_bytes:
                    raise ImageRejected(
                        name,
                        f"the file has {len(c.data)} bytes, over the limit of "
                        f"{limits.max_image_bytes}",
                        413,
                        "image_bytes_too_large",
                    )
                img = decode_image(c.data, name, max_pixels=limits.max_pixels)
            except ImageRejected as exc:
                if single_file:
                    raise _as_error(exc) from None
                out.rejected.append(RejectedFile(filename=name, reason=exc.reason, code=exc.code))
                continue
            # The blob first: a row never points at bytes that are not there; a blob whose row
            # is never written is left to `headhub gc`.
            blobs.put(image_key(sha), c.data)
            seen.add(sha)
            prepared.append(Prepared(sha, c.label, name, len(c.data), img.width, img.height))
    return prepared


def _chunks(
    candidates: Iterable[Candidate], max_items: int = 64, max_bytes: int = 64 * 1024 * 1024
) -> Iterator[list[Candidate]]:
    """Candidates in groups, so one short query finds each group's duplicates."""
    chunk: list[Candidate] = []
    size = 0
    for c in candidates:
        chunk.append(c)
        size += len(c.data)
        if len(chunk) >= max_items or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def record(
    session: Session,
    dataset: Dataset,
    prepared: list[Prepared],
    *,
    limits: IngestLimits,
    out: Ingest,
) -> Ingest:
    """Write the rows of `prepared` in one short transaction under the tenant's lock, so the
    caps on images, bytes and labels hold when uploads race (docs/threats.md)."""
    lock_tenant(session, dataset.tenant_id)
    if repo.get_dataset(session, dataset.id, None) is None:
        raise NotFound(f"No dataset '{dataset.id}'.", code="dataset_not_found")
    images, nbytes = repo.tenant_usage(session, dataset.tenant_id)
    if prepared and images >= limits.max_tenant_images:
        raise _image_quota(images, limits)
    if prepared and nbytes >= limits.max_tenant_bytes:
        raise _byte_quota(nbytes, limits)
    labels = repo.dataset_labels(session, dataset.id)
    present = repo.existing_shas(session, dataset.id, [p.sha256 for p in prepared])
    rows: list[DatasetImage] = []
    for p in prepared:
        if p.sha256 in present:
            out.duplicates += 1  # a concurrent upload of the same image won the race
            continue
        reason, code = None, None
        if images >= limits.max_tenant_images:
            reason = f"the tenant's limit of {limits.max_tenant_images} images is reached"
            code = "image_quota_exceeded"
        elif nbytes + p.size_bytes > limits.max_tenant_bytes:
            reason = f"the tenant's limit of {limits.max_tenant_bytes} image bytes is reached"
            code = "byte_quota_exceeded"
        elif p.label not in labels and len(labels) >= limits.max_labels:
            reason = f"the dataset's limit of {limits.max_labels} labels is reached"
            code = "too_many_labels"
        if code is not None:
            out.rejected.append(RejectedFile(filename=p.filename, reason=str(reason), code=code))
            continue
        images += 1
        nbytes += p.size_bytes
        labels.add(p.label)
        rows.append(
            DatasetImage(
                dataset_id=dataset.id,
                sha256=p.sha256,
                tenant_id=dataset.tenant_id,
                label=p.label,
                filename=p.filename,
                size_bytes=p.size_bytes,
                width=p.width,
                height=p.height,
            )
        )
    if rows:
        try:
            with session.begin_nested():
                session.add_all(rows)
                session.flush()
        except IntegrityError:  # the dataset was deleted meanwhile
            raise NotFound(f"No dataset '{dataset.id}'.", code="dataset_not_found") from None
        repo.touch_dataset(session, dataset.id, utcnow())
    out.added += len(rows)
    return out
