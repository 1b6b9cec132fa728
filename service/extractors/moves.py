"""Enqueueing moves: a head version retrained on another extractor, one head or every head on one.

A move is a job of kind `move` (the worker's side is `service.jobs.moving`): the version's
dataset featurized on the target extractor, the same head type, params, seed and validation
fraction, both versions scored on the same validation split. A bulk move queues one job per head
under the head's own tenant, so the queue's tenant-fair claim (service/jobs/repository.py) moves
every tenant's heads in turn, and a tenant's own training jobs go first (lower priority).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.auth import Principal
from service.db import utcnow
from service.errors import Conflict, NotFound, RateLimited
from service.extractors import repository as repo
from service.extractors.schemas import BulkMoveCreate, HeadMoveCreate
from service.extractors.service import ACTIVE, get_or_404
from service.extractors.tables import Extractor, ExtractorMove
from service.heads import repository as heads_repo
from service.heads import service as heads
from service.heads.refs import HeadRef, UnresolvedRef, version_to_use
from service.heads.tables import Head, HeadVersion
from service.jobs import repository as jobs_repo
from service.jobs.tables import ACTIVE as ACTIVE_JOBS
from service.jobs.tables import Job
from service.settings import Settings

BULK_PRIORITY = -1  # below a tenant's own training jobs (default 0)


def _target(session: Session, extractor_id: str) -> Extractor:
    target = get_or_404(session, extractor_id)
    if target.status != ACTIVE:
        raise Conflict(
            f"Extractor {extractor_id[:12]}... is {target.status}; heads move to active ones.",
            code="extractor_not_active",
        )
    return target


def _same_extractor(what: str, extractor_id: str) -> Conflict:
    return Conflict(
        f"{what} is already on extractor {extractor_id[:12]}....", code="same_extractor"
    )


def training_recipe(session: Session, version: HeadVersion) -> dict[str, Any]:
    """Head type, params, seed and validation fraction the version was trained with: from the
    job that made it when it still exists, else from what the trainer wrote in its metrics."""
    metrics = version.metrics or {}
    job = session.get(Job, version.job_id) if version.job_id else None
    if job is not None:
        return {
            "head_type": version.head_type,
            "params": dict(job.params or {}),
            "seed": int(job.seed),
            "validation_fraction": float(job.validation_fraction),
        }
    return {
        "head_type": version.head_type,
        "params": dict(metrics.get("params") or {}),
        "seed": int(metrics.get("seed") or 0),
        "validation_fraction": float(metrics.get("validation_fraction", 0.2)),
    }


def _job(
    session: Session,
    head: Head,
    version: HeadVersion,
    target: str,
    *,
    promote: bool,
    settings: Settings,
    bulk_move_id: str | None = None,
) -> Job:
    recipe = training_recipe(session, version)
    job = Job(
        tenant_id=head.tenant_id,
        kind="move",
        dataset_id=version.dataset_id or "",  # none: the job fails, saying so
        head_name=head.name,
        head_type=recipe["head_type"],
        params=recipe["params"],
        validation_fraction=recipe["validation_fraction"],
        seed=recipe["seed"],
        priority=BULK_PRIORITY if bulk_move_id else 0,
        extractor_id=target,
        from_version=version.version,
        promote_if_not_worse=promote,
        bulk_move_id=bulk_move_id,
        max_attempts=settings.job_max_attempts,
        run_after=utcnow(),
    )
    session.add(job)
    return job


def move_head(
    session: Session,
    principal: Principal,
    owner: str,
    name: str,
    body: HeadMoveCreate,
    settings: Settings,
) -> Job:
    """Queue one head's move (owner or admin); 404 unknown extractor, 409 already there."""
    head = heads.find_writable(session, principal, owner, name)
    target = _target(session, body.extractor_id)
    if body.from_version is not None:
        version = heads.get_version_or_404(session, head, owner, body.from_version)
    else:
        alias = heads_repo.get_alias(session, head.id, "production")

        def newest() -> int | None:
            found = heads_repo.newest_version(session, head.id)
            return None if found is None else found.version

        try:
            number = version_to_use(
                HeadRef(owner=owner, name=name),
                alias_target=None if alias is None else alias.version,
                newest=newest,
            )
        except UnresolvedRef as exc:
            raise NotFound(f"Head '{owner}/{name}' {exc.reason}.", code=exc.code) from None
        version = heads.get_version_or_404(session, head, owner, number)
    if version.extractor_id == target.id:
        raise _same_extractor(f"Version {version.version} of '{owner}/{name}'", target.id)
    jobs_repo.lock_tenant(session, head.tenant_id)
    cap = settings.max_active_jobs_per_tenant
    if jobs_repo.count_active(session, head.tenant_id) >= cap:
        raise RateLimited(
            f"At most {cap} queued or running jobs per tenant; wait for some to finish.",
            code="too_many_jobs",
            retry_after=int(max(1, settings.worker_poll_s * 10)),
        )
    job = _job(
        session, head, version, target.id, promote=body.promote_if_not_worse, settings=settings
    )
    session.flush()
    return job


def bulk_move(
    session: Session, source: Extractor, body: BulkMoveCreate, settings: Settings
) -> ExtractorMove:
    """One move job per head whose production (or newest) version is on `source` (admin).

    Heads with a move to the same target still queued or running are not queued twice, so
    repeating the call is harmless. The tenants' job caps do not apply: the operator asked.
    """
    target = _target(session, body.to)
    if target.id == source.id:
        raise _same_extractor("Every head of this extractor", source.id)
    busy = set(
        session.scalars(
            select(Job.head_name + "/" + Job.tenant_id).where(
                Job.kind == "move", Job.extractor_id == target.id, Job.status.in_(ACTIVE_JOBS)
            )
        )
    )
    move = ExtractorMove(
        from_extractor_id=source.id,
        to_extractor_id=target.id,
        promote_if_not_worse=body.promote_if_not_worse,
    )
    session.add(move)
    session.flush()
    total = 0
    for head, number in repo.heads_to_move(session, source.id):
        if f"{head.name}/{head.tenant_id}" in busy:
            continue
        version = heads_repo.get_version(session, head.id, number)
        if version is None:
            continue
        _job(
            session,
            head,
            version,
            target.id,
            promote=body.promote_if_not_worse,
            settings=settings,
            bulk_move_id=move.id,
        )
        total += 1
    move.total = total
    session.flush()
    return move
