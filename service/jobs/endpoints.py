from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, status

from service.deps import AdminDep, OwnerDep, SessionDep, SettingsDep
from service.errors import NotFound
from service.jobs import repository as repo
from service.jobs import service
from service.jobs.schemas import JobCreate, JobList, JobOut, JobStatusName
from service.text import SafeName

router = APIRouter(tags=["jobs"])

IdempotencyKey = Annotated[
    SafeName | None,  # stored and shown back: no control characters (service/text.py)
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retrying a POST with the same key returns the first job instead of a new one.",
    ),
]


@router.post("/v1/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def create_job(
    body: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    principal: OwnerDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Queue a training job; a worker trains the head and registers a new version of it."""
    job = service.enqueue(
        session, principal, body, idempotency_key=idempotency_key, settings=settings
    )
    return service.out(session, job)


@router.get("/v1/jobs", response_model=JobList)
def list_jobs(
    session: SessionDep,
    principal: OwnerDep,
    status: JobStatusName | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobList:
    """The caller's jobs, newest first (an admin sees every tenant's)."""
    return service.list_jobs(
        session, tenant_id=principal.tenant_id, status=status, cursor=cursor, limit=limit
    )


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, principal: OwnerDep) -> JobOut:
    """Status, progress, attempt, metrics (with per-epoch history while it runs) and the version."""
    return service.out(session, service.get_for(session, principal, job_id))


@router.post(
    "/v1/jobs/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut
)
def cancel_job(job_id: str, session: SessionDep, principal: OwnerDep) -> JobOut:
    """Cancel: a queued job never runs; a running one stops at its next progress check."""
    return service.out(session, service.cancel(session, principal, job_id))


@router.get("/v1/admin/jobs", response_model=JobList)
def admin_list_jobs(
    session: SessionDep,
    _: AdminDep,
    status: JobStatusName | None = None,
    owner: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobList:
    """Every tenant's jobs (admin), filterable by status and owner (tenant name)."""
    tenant_id = None
    if owner is not None:
        tenant = repo.tenant_by_name(session, owner)
        if tenant is None:
            raise NotFound(f"No tenant named '{owner}'.", code="tenant_not_found")
        tenant_id = tenant.id
    return service.list_jobs(
        session, tenant_id=tenant_id, status=status, cursor=cursor, limit=limit
    )
