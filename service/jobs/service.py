"""Job logic for the API: enqueue (cap, idempotency), read, list, cancel. Never commits."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.auth import Principal
from service.db import as_utc, utcnow
from service.errors import BadRequest, Conflict, NotFound, RateLimited, Unprocessable
from service.extractors.service import for_training
from service.heads.repository import get_head_by_tenant
from service.heads.service import check_head_room
from service.jobs import repository as repo
from service.jobs.schemas import HeadVersionRef, JobCreate, JobList, JobOut
from service.jobs.tables import FINISHED, Job, JobStatus
from service.settings import Settings
from service.training import InvalidParams, parse_params


def backoff_s(attempt: int, settings: Settings) -> float:
    """Delay before attempt + 1: base * 2^(attempt-1), capped. No jitter, so it is testable;
    claims are spread by SKIP LOCKED and fairness, not by random delays."""
    return min(settings.job_backoff_max_s, settings.job_backoff_base_s * 2 ** max(0, attempt - 1))


def _request_hash(body: JobCreate) -> str:
    # Without an extractor_id the body hashes as before it existed (keys reused across upgrade).
    doc = body.model_dump(
        mode="json", exclude={"extractor_id"} if body.extractor_id is None else None
    )
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def enqueue(
    session: Session,
    principal: Principal,
    body: JobCreate,
    *,
    idempotency_key: str | None,
    settings: Settings,
) -> Job:
    """Queue a training job for the dataset's tenant (an admin trains for the dataset's owner).

    The same Idempotency-Key returns the first job, also when two requests race: the tenant row
    is locked for the check, and the unique (tenant_id, idempotency_key) constraint backs it up.
    """
    try:
        params = parse_params(body.head_type, body.params)
    except InvalidParams as exc:
        raise Unprocessable(str(exc), code="invalid_params") from None
    if params.epochs > settings.job_max_epochs:  # with the wall clock: no job runs for ever
        raise Unprocessable(
            f"invalid params: epochs may be at most {settings.job_max_epochs}.",
            code="invalid_params",
        )
    dataset = repo.get_dataset(session, body.dataset_id)
    if dataset is None or (not principal.is_admin and dataset.tenant_id != principal.tenant_id):
        raise NotFound(f"No dataset '{body.dataset_id}'.", code="dataset_not_found")
    tenant_id = dataset.tenant_id
    request_hash = _request_hash(body)

    repo.lock_tenant(session, tenant_id)
    if idempotency_key is not None:
        existing = repo.get_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return _same_request(existing, request_hash)
    extractor_id = for_training(session, body.extractor_id)  # 404 unknown, 409 retired
    counts = repo.label_counts(session, dataset.id)
    if len(counts) < 2:
        raise Unprocessable(
            f"Dataset '{dataset.name}' has {len(counts)} label(s); a head needs at least 2.",
            code="dataset_too_small",
        )
    if len(counts) > settings.max_labels_per_dataset:
        raise Unprocessable(
            f"Dataset '{dataset.name}' has {len(counts)} labels; a head may have at most "
            f"{settings.max_labels_per_dataset}.",
            code="too_many_labels",
        )
    if get_head_by_tenant(session, tenant_id, body.head) is None:
        check_head_room(session, tenant_id, settings.max_heads_per_tenant)
    cap = settings.max_active_jobs_per_tenant
    if repo.count_active(session, tenant_id) >= cap:
        raise RateLimited(
            f"At most {cap} queued or running jobs per tenant; wait for some to finish.",
            code="too_many_jobs",
            retry_after=int(max(1, settings.worker_poll_s * 10)),
        )
    job = Job(
        tenant_id=tenant_id,
        dataset_id=dataset.id,
        head_name=body.head,
        head_type=body.head_type,
        params=body.params,
        validation_fraction=body.validation_fraction,
        seed=body.seed,
        priority=body.priority,
        max_attempts=settings.job_max_attempts,
        run_after=utcnow(),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        extractor_id=extractor_id,
    )
    session.add(job)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = repo.get_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is None:
            raise
        return _same_request(existing, request_hash)
    return job


def _same_request(job: Job, request_hash: str) -> Job:
    if job.request_hash != request_hash:
        raise Conflict(
            "This Idempotency-Key was used with a different request body.",
            code="idempotency_key_reused",
        )
    return job


def get_for(session: Session, principal: Principal, job_id: str) -> Job:
    """The job as `principal` may see it; another tenant's job is a 404."""
    job = repo.get(session, job_id)
    if job is None or (not principal.is_admin and job.tenant_id != principal.tenant_id):
        raise NotFound(f"No job '{job_id}'.", code="job_not_found")
    return job


def cancel(session: Session, principal: Principal, job_id: str) -> Job:
    """Queued: cancelled at once, it never runs. Running: flagged; the worker stops at its next
    progress check and the job ends `cancelled`, never retried. Finished: 409 (cancelled: no-op)."""
    job = get_for(session, principal, job_id)
    for _ in range(3):  # the job may be claimed between the two conditional updates
        if repo.cancel_queued(session, job_id, utcnow()):
            break
        if repo.request_cancel_running(session, job_id):
            break
        job = repo.get(session, job_id) or job
        if job.status == JobStatus.cancelled:
            break
        if job.status in FINISHED:
            raise Conflict(f"Job '{job_id}' already {job.status}.", code="job_finished")
    session.expire(job)
    return repo.get(session, job_id) or job


def to_out(job: Job, owner: str) -> JobOut:
    def t(dt: datetime | None) -> datetime | None:
        return None if dt is None else as_utc(dt)

    ref = HeadVersionRef(ref=job.head_version_ref) if job.head_version_ref else None
    return JobOut(
        id=job.id,
        owner=owner,
        kind=job.kind,  # type: ignore[arg-type]
        status=job.status,  # type: ignore[arg-type]
        progress=min(1.0, max(0.0, job.progress or 0.0)),
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        error=job.error,
        metrics=job.metrics,
        head_version=ref,
        dataset_id=job.dataset_id,
        head=job.head_name,
        head_type=job.head_type,
        params=job.params or {},
        validation_fraction=job.validation_fraction,
        seed=job.seed,
        priority=job.priority,
        extractor_id=job.extractor_id,
        from_version=job.from_version,
        promote_if_not_worse=bool(job.promote_if_not_worse),
        cancel_requested=job.cancel_requested,
        idempotency_key=job.idempotency_key,
        created_at=as_utc(job.created_at),
        started_at=t(job.started_at),
        finished_at=t(job.finished_at),
        run_after=as_utc(job.run_after),
    )


def out(session: Session, job: Job) -> JobOut:
    return to_out(job, repo.tenant_name(session, job.tenant_id))


def list_jobs(
    session: Session,
    *,
    tenant_id: str | None,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> JobList:
    after = _decode_cursor(cursor) if cursor else None
    rows = repo.list_jobs(session, tenant_id=tenant_id, status=status, after=after, limit=limit + 1)
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1][0]
        next_cursor = _encode_cursor(as_utc(last.created_at), last.id)
    return JobList(items=[to_out(job, owner) for job, owner in page], next_cursor=next_cursor)


def _encode_cursor(created: datetime, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created.isoformat()}|{job_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("Malformed cursor.", code="bad_cursor") from None
