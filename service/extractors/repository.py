"""All SQL about the extractor registry, what is pinned to an extractor, and bulk-move progress."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import Subquery

from service.extractors.tables import Extractor, ExtractorMove
from service.heads.tables import Head, HeadAlias, HeadVersion
from service.jobs.tables import Job, JobStatus
from service.tenants.tables import Tenant

PRODUCTION = "production"


def get(session: Session, extractor_id: str) -> Extractor | None:
    return session.get(Extractor, extractor_id)


def get_many(session: Session, ids: Sequence[str]) -> dict[str, Extractor]:
    if not ids:
        return {}
    rows = session.scalars(select(Extractor).where(Extractor.id.in_(list(ids))))
    return {e.id: e for e in rows}


def get_default(session: Session) -> Extractor | None:
    return session.scalar(select(Extractor).where(Extractor.is_default.is_(True)))


def list_all(session: Session) -> list[Extractor]:
    """Default first, then the newest registrations."""
    return list(
        session.scalars(
            select(Extractor).order_by(
                Extractor.is_default.desc(), Extractor.created_at.desc(), Extractor.id
            )
        )
    )


def clear_default(session: Session) -> None:
    session.execute(
        update(Extractor).where(Extractor.is_default.is_(True)).values(is_default=False),
        execution_options={"synchronize_session": "fetch"},
    )


REGISTRY_LOCK = 0x68686578  # "hhex": one advisory lock for changes of the default


def lock_registry(session: Session) -> None:
    """Serialise changes of the default on PostgreSQL until the transaction ends (an advisory
    lock: row locks cannot cover the first registration into an empty table); SQLite's
    BEGIN IMMEDIATE already serialises writers."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(REGISTRY_LOCK)))


def pinned_counts(session: Session) -> dict[str, tuple[int, int]]:
    """extractor id -> (head versions pinned to it, aliases pointing at such versions)."""
    versions = dict(
        session.execute(
            select(HeadVersion.extractor_id, func.count()).group_by(HeadVersion.extractor_id)
        ).all()
    )
    aliases = dict(
        session.execute(
            select(HeadVersion.extractor_id, func.count())
            .select_from(HeadAlias)
            .join(
                HeadVersion,
                and_(
                    HeadVersion.head_id == HeadAlias.head_id,
                    HeadVersion.version == HeadAlias.version,
                ),
            )
            .group_by(HeadVersion.extractor_id)
        ).all()
    )
    ids = set(versions) | set(aliases)
    return {i: (int(versions.get(i, 0)), int(aliases.get(i, 0))) for i in ids}


def _newest_versions() -> Subquery:
    """(head_id, newest version number) per head, as a subquery."""
    return (
        select(HeadVersion.head_id, func.max(HeadVersion.version).label("version"))
        .group_by(HeadVersion.head_id)
        .subquery()
    )


@dataclass(frozen=True)
class PinnedUse:
    """A head that resolves to a version on the extractor: through `alias`, or implicitly."""

    head_id: str
    owner: str
    name: str
    version: int
    alias: str | None  # None: the implicit version (no `production` alias, newest version)


def uses(session: Session, extractor_id: str) -> list[PinnedUse]:
    """Every alias and implicit version that resolves to a version on `extractor_id`."""
    by_alias = session.execute(
        select(Head.id, Tenant.name, Head.name, HeadAlias.version, HeadAlias.alias)
        .join(Tenant, Tenant.id == Head.tenant_id)
        .join(HeadAlias, HeadAlias.head_id == Head.id)
        .join(
            HeadVersion,
            and_(
                HeadVersion.head_id == HeadAlias.head_id, HeadVersion.version == HeadAlias.version
            ),
        )
        .where(HeadVersion.extractor_id == extractor_id)
    ).all()
    newest = _newest_versions()
    has_production = exists().where(HeadAlias.head_id == Head.id, HeadAlias.alias == PRODUCTION)
    implicit = session.execute(
        select(Head.id, Tenant.name, Head.name, HeadVersion.version)
        .join(Tenant, Tenant.id == Head.tenant_id)
        .join(newest, newest.c.head_id == Head.id)
        .join(
            HeadVersion,
            and_(
                HeadVersion.head_id == Head.id,
                HeadVersion.version == newest.c.version,
            ),
        )
        .where(HeadVersion.extractor_id == extractor_id, ~has_production)
    ).all()
    found = [PinnedUse(h, o, n, v, a) for h, o, n, v, a in by_alias]
    found += [PinnedUse(h, o, n, v, None) for h, o, n, v in implicit]
    return sorted(found, key=lambda u: (u.owner, u.name, u.alias or ""))


def heads_to_move(session: Session, extractor_id: str) -> list[tuple[Head, int]]:
    """(head, version) of every head whose `production` version, or newest one when it has no
    `production` alias, is on `extractor_id`: what a bulk move moves."""
    production = (
        select(HeadAlias.head_id, HeadAlias.version).where(HeadAlias.alias == PRODUCTION).subquery()
    )
    newest = _newest_versions()
    target = func.coalesce(production.c.version, newest.c.version)
    rows = session.execute(
        select(Head, HeadVersion.version)
        .join(newest, newest.c.head_id == Head.id)
        .outerjoin(production, production.c.head_id == Head.id)
        .join(HeadVersion, and_(HeadVersion.head_id == Head.id, HeadVersion.version == target))
        .where(HeadVersion.extractor_id == extractor_id)
        .order_by(Head.tenant_id, Head.name)
    ).all()
    return [(head, int(version)) for head, version in rows]


def newest_version_on(
    session: Session, head_id: str, extractor_ids: Sequence[str]
) -> HeadVersion | None:
    if not extractor_ids:
        return None
    return session.scalar(
        select(HeadVersion)
        .where(HeadVersion.head_id == head_id, HeadVersion.extractor_id.in_(list(extractor_ids)))
        .order_by(HeadVersion.version.desc())
        .limit(1)
    )


def active_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Extractor.id).where(Extractor.status == "active")))


# --- bulk moves -----------------------------------------------------------------------------


def latest_move(session: Session, from_extractor_id: str) -> ExtractorMove | None:
    return session.scalar(
        select(ExtractorMove)
        .where(ExtractorMove.from_extractor_id == from_extractor_id)
        .order_by(ExtractorMove.created_at.desc(), ExtractorMove.id.desc())
        .limit(1)
    )


def move_job_counts(session: Session, move_id: str) -> dict[str, int]:
    rows = session.execute(
        select(Job.status, func.count()).where(Job.bulk_move_id == move_id).group_by(Job.status)
    ).all()
    return {status: int(n) for status, n in rows}


def failed_moves(session: Session, move_id: str, limit: int = 20) -> list[tuple[str, str, str]]:
    """(owner, head name, error) of the move's failed jobs."""
    rows = session.execute(
        select(Tenant.name, Job.head_name, Job.error)
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(
            Job.bulk_move_id == move_id,
            Job.status.in_([JobStatus.failed.value, JobStatus.cancelled.value]),
        )
        .order_by(Tenant.name, Job.head_name)
        .limit(limit)
    ).all()
    return [(o, n, e or "") for o, n, e in rows]
