"""The jobs table: the queue itself (no broker), with leases, attempts and idempotency keys."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, new_id, utcnow


class JobStatus(enum.StrEnum):
    """queued -> running -> succeeded | failed | cancelled; running -> queued on retry."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE = (JobStatus.queued, JobStatus.running)
FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # One job per (tenant, Idempotency-Key); NULL keys never collide (SQL NULL semantics).
        UniqueConstraint("tenant_id", "idempotency_key"),
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="status"
        ),
        CheckConstraint("attempt >= 0 AND max_attempts >= 1", name="attempts"),
        # The claim scans queued jobs by run_after; the reaper scans running jobs by lease.
        Index("ix_jobs_status_run_after", "status", "run_after"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        # Fairness and the per-tenant cap look at one tenant's jobs by status / last start.
        Index("ix_jobs_tenant_status", "tenant_id", "status"),
        Index("ix_jobs_tenant_started", "tenant_id", "started_at"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # Provenance, no foreign key: deleting a dataset must not erase the job history.
    dataset_id: Mapped[str] = mapped_column(String(32))
    head_name: Mapped[str] = mapped_column(String(64))
    head_type: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    validation_fraction: Mapped[float] = mapped_column(Float, default=0.2)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=0)  # higher first, within a tenant
    # "train": a head from a dataset; "move": a version retrained on another extractor
    # (docs/architecture.md, "Extractor lifecycle").
    kind: Mapped[str] = mapped_column(String(16), default="train", server_default="train")
    # The extractor whose features train the head; None: whatever the replicas serve by default
    # (jobs queued before the registry knew a default).
    extractor_id: Mapped[str | None] = mapped_column(String(64), default=None)
    from_version: Mapped[int | None] = mapped_column(Integer, default=None)  # a move's source
    promote_if_not_worse: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    bulk_move_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)

    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # +1 at every claim: the fence token
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)  # backoff: not claimable before
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    head_version_id: Mapped[str | None] = mapped_column(String(32), default=None)
    head_version_ref: Mapped[str | None] = mapped_column(String(200), default=None)

    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    # sha256 of the request body, so a reused key with another body is refused, not ignored.
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)  # of the latest attempt
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
