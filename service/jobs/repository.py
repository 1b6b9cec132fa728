"""All SQL of the queue. Every state change of a claimed job is fenced by (id, attempt, running).

Claiming is one statement on PostgreSQL (UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED
LIMIT 1) RETURNING, as procrastinate and River do). SQLite has no SKIP LOCKED (SQLAlchemy drops
it silently) but serialises writers: our engine opens every transaction with BEGIN IMMEDIATE, so
the candidate SELECT and the conditional UPDATE ... WHERE status = 'queued' run under one write
lock, and the row count still guards the claim.

Fairness: candidates are ordered by (running jobs of their tenant, the tenant's most recent
claim, oldest first with never-served tenants first, priority, age). The least recently served
tenant goes next, so tenants take turns however many jobs one of them queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, case, func, select, update
from sqlalchemy.orm import Session, aliased

from service.datasets.tables import Dataset, DatasetImage
from service.jobs.tables import ACTIVE, Job, JobStatus
from service.tenants.tables import Tenant

QUEUED, RUNNING = JobStatus.queued.value, JobStatus.running.value


def _rowcount(session: Session, stmt: Any) -> int:
    result = session.execute(stmt, execution_options={"synchronize_session": False})
    return int(cast(CursorResult[Any], result).rowcount)


def _fence(job_id: str, attempt: int) -> Any:
    return and_(Job.id == job_id, Job.attempt == attempt, Job.status == RUNNING)


def _candidate(now: datetime, skip_locked: bool) -> Any:
    """SELECT id of the next claimable job, fairest tenant first."""
    other = aliased(Job)
    running = (
        select(func.count())
        .where(other.tenant_id == Job.tenant_id, other.status == RUNNING)
        .scalar_subquery()
    )
    last = aliased(Job)
    last_served = select(func.max(last.started_at)).where(last.tenant_id == Job.tenant_id)
    stmt = (
        select(Job.id)
        .where(Job.status == QUEUED, Job.run_after <= now)
        .order_by(
            running.asc(),
            last_served.scalar_subquery().asc().nulls_first(),
            Job.priority.desc(),
            Job.created_at.asc(),
            Job.id.asc(),
        )
        .limit(1)
    )
    return stmt.with_for_update(skip_locked=True, of=Job) if skip_locked else stmt


def claim(session: Session, *, worker_id: str, now: datetime, lease_s: float) -> Job | None:
    """Claim one queued job whose run_after has passed: status running, attempt + 1, a lease."""
    values = {
        "status": RUNNING,
        "attempt": Job.attempt + 1,
        "worker_id": worker_id,
        "started_at": now,
        "heartbeat_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_s),
        "progress": 0.0,
    }
    if session.get_bind().dialect.name == "postgresql":
        job_id = _candidate(now, skip_locked=True).scalar_subquery()
        stmt = update(Job).where(Job.id == job_id, Job.status == QUEUED).values(**values)
        return session.scalars(
            stmt.returning(Job), execution_options={"synchronize_session": False}
        ).one_or_none()
    for _ in range(5):  # SQLite: a lost race shows as rowcount 0; look again
        job_id = session.scalar(_candidate(now, skip_locked=False))
        if job_id is None:
            return None
        stmt = update(Job).where(Job.id == job_id, Job.status == QUEUED).values(**values)
        if _rowcount(session, stmt) == 1:
            return session.get(Job, job_id, populate_existing=True)
    return None


def reap_expired(session: Session, *, now: datetime) -> int:
    """Running jobs whose lease expired (their worker died): back to the queue for attempt + 1,
    or `failed` when that was the last attempt, or `cancelled` if a cancel was pending."""
    expired = and_(Job.status == RUNNING, Job.lease_expires_at < now)
    terminal = case(
        (Job.cancel_requested, JobStatus.cancelled.value),
        (Job.attempt >= Job.max_attempts, JobStatus.failed.value),
        else_=QUEUED,
    )
    is_final = Job.cancel_requested | (Job.attempt >= Job.max_attempts)
    stmt = (
        update(Job)
        .where(expired)
        .values(
            status=terminal,
            error=case(
                (Job.cancel_requested, Job.error),
                else_="lease expired: the worker stopped heartbeating (crashed or killed)",
            ),
            finished_at=case((is_final, now), else_=None),
            run_after=now,
            worker_id=None,
            lease_expires_at=None,
        )
    )
    return _rowcount(session, stmt)


def heartbeat(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    now: datetime,
    lease_s: float,
    progress: float,
    metrics: dict[str, Any] | None,
) -> bool | None:
    """Renew the lease, store progress; return cancel_requested, or None if the lease is lost."""
    values: dict[str, Any] = {
        "heartbeat_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_s),
        "progress": progress,
    }
    if metrics is not None:
        values["metrics"] = metrics
    stmt = update(Job).where(_fence(job_id, attempt)).values(**values)
    stmt = stmt.returning(Job.cancel_requested)
    return session.execute(stmt, execution_options={"synchronize_session": False}).scalar()


def finish(session: Session, job_id: str, attempt: int, **values: Any) -> bool:
    """Fenced final write (succeeded / failed / cancelled / requeued); False if fenced out."""
    stmt = update(Job).where(_fence(job_id, attempt)).values(worker_id=None, **values)
    if values.get("status") == JobStatus.succeeded.value:
        stmt = stmt.where(Job.cancel_requested.is_(False))  # a cancel wins over a late success
    return _rowcount(session, stmt) == 1


def retry_or_fail(
    session: Session, job_id: str, attempt: int, *, error: str, now: datetime, delay_s: float
) -> str | None:
    """Queue the next attempt after `delay_s`, or fail if this was the last. Returns the status."""
    last = Job.attempt >= Job.max_attempts
    stmt = (
        update(Job)
        .where(_fence(job_id, attempt))
        .values(
            status=case((last, JobStatus.failed.value), else_=QUEUED),
            error=error,
            run_after=now + timedelta(seconds=delay_s),
            finished_at=case((last, now), else_=None),
            worker_id=None,
            lease_expires_at=None,
        )
        .returning(Job.status)
    )
    return session.execute(stmt, execution_options={"synchronize_session": False}).scalar()


def hand_back(session: Session, job_id: str, attempt: int, *, now: datetime) -> bool:
    """Shutdown: the job returns to the queue at once. The attempt stays (fence tokens only grow)
    but max_attempts grows with it, so a deploy never uses up a job's retries."""
    return finish(
        session,
        job_id,
        attempt,
        status=QUEUED,
        run_after=now,
        lease_expires_at=None,
        max_attempts=Job.max_attempts + 1,
        error="handed back: the worker shut down before the job finished",
    )


def set_head_version(session: Session, job_id: str, version_id: str, ref: str) -> None:
    stmt = (
        update(Job).where(Job.id == job_id).values(head_version_id=version_id, head_version_ref=ref)
    )
    session.execute(stmt, execution_options={"synchronize_session": False})


def cancel_queued(session: Session, job_id: str, now: datetime) -> bool:
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(status=JobStatus.cancelled.value, cancel_requested=True, finished_at=now)
    )
    return _rowcount(session, stmt) == 1


def request_cancel_running(session: Session, job_id: str) -> bool:
    stmt = update(Job).where(Job.id == job_id, Job.status == RUNNING).values(cancel_requested=True)
    return _rowcount(session, stmt) == 1


# --- reads ----------------------------------------------------------------------------------


def get(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def get_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def count_active(session: Session, tenant_id: str) -> int:
    """The tenant's queued and running jobs, against its cap. Moves an operator queued for every
    head of an extractor (`bulk_move_id`) are not the tenant's doing and never block its own."""
    stmt = select(func.count()).where(
        Job.tenant_id == tenant_id, Job.status.in_(ACTIVE), Job.bulk_move_id.is_(None)
    )
    return int(session.scalar(stmt) or 0)


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialise one tenant's enqueues (cap check + insert) on PostgreSQL; SQLite's BEGIN
    IMMEDIATE already does."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def list_jobs(
    session: Session,
    *,
    tenant_id: str | None,
    status: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> Sequence[tuple[Job, str]]:
    """Newest first, with the owner's name; keyset pagination on (created_at, id)."""
    stmt = select(Job, Tenant.name).join(Tenant, Tenant.id == Job.tenant_id)
    if tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == tenant_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if after is not None:
        created, job_id = after
        stmt = stmt.where(
            (Job.created_at < created) | ((Job.created_at == created) & (Job.id < job_id))
        )
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return [(job, name) for job, name in session.execute(stmt).all()]


def tenant_name(session: Session, tenant_id: str) -> str:
    return str(session.scalar(select(Tenant.name).where(Tenant.id == tenant_id)))


def tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def get_dataset(session: Session, dataset_id: str) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def label_counts(session: Session, dataset_id: str) -> dict[str, int]:
    stmt = (
        select(DatasetImage.label, func.count())
        .where(DatasetImage.dataset_id == dataset_id)
        .group_by(DatasetImage.label)
    )
    return {label: int(n) for label, n in session.execute(stmt).all()}
