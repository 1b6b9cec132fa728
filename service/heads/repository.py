"""All SQL about heads, versions, aliases and usage."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from sqlalchemy import String, cast, delete, exists, func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from service.db import utcnow
from service.heads.tables import Head, HeadAlias, HeadUsage, HeadVersion
from service.tenants.tables import Tenant

HeadRow = tuple[Head, str]  # a head with its owner's tenant name


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def get_head(session: Session, owner: str, name: str) -> HeadRow | None:
    row = session.execute(
        select(Head, Tenant.name)
        .join(Tenant, Tenant.id == Head.tenant_id)
        .where(Tenant.name == owner, Head.name == name)
    ).first()
    return (row[0], row[1]) if row else None


def get_head_by_tenant(session: Session, tenant_id: str, name: str) -> Head | None:
    return session.scalar(select(Head).where(Head.tenant_id == tenant_id, Head.name == name))


def next_version_number(session: Session, head_id: str) -> int:
    """Bump and return the head's version counter in one statement (row lock on PostgreSQL)."""
    return int(
        session.execute(
            update(Head)
            .where(Head.id == head_id)
            .values(version_counter=Head.version_counter + 1, updated_at=utcnow())
            .returning(Head.version_counter)
        ).scalar_one()
    )


def list_versions(session: Session, head_id: str) -> list[HeadVersion]:
    return list(
        session.scalars(
            select(HeadVersion).where(HeadVersion.head_id == head_id).order_by(HeadVersion.version)
        )
    )


def get_version(session: Session, head_id: str, version: int) -> HeadVersion | None:
    return session.scalar(
        select(HeadVersion).where(HeadVersion.head_id == head_id, HeadVersion.version == version)
    )


def newest_version(session: Session, head_id: str) -> HeadVersion | None:
    return session.scalar(
        select(HeadVersion)
        .where(HeadVersion.head_id == head_id)
        .order_by(HeadVersion.version.desc())
        .limit(1)
    )


def get_aliases(session: Session, head_id: str) -> dict[str, int]:
    rows = session.execute(
        select(HeadAlias.alias, HeadAlias.version)
        .where(HeadAlias.head_id == head_id)
        .order_by(HeadAlias.alias)
    )
    return {alias: version for alias, version in rows}


def get_alias(session: Session, head_id: str, alias: str) -> HeadAlias | None:
    return session.get(HeadAlias, (head_id, alias))


def aliases_of_version(session: Session, head_id: str, version: int) -> list[str]:
    return list(
        session.scalars(
            select(HeadAlias.alias).where(
                HeadAlias.head_id == head_id, HeadAlias.version == version
            )
        )
    )


def count_aliases(session: Session, tenant_id: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(HeadAlias)
            .join(Head, Head.id == HeadAlias.head_id)
            .where(Head.tenant_id == tenant_id)
        )
        or 0
    )


def count_heads(session: Session, tenant_id: str) -> int:
    return int(
        session.scalar(select(func.count()).select_from(Head).where(Head.tenant_id == tenant_id))
        or 0
    )


def blob_in_use(session: Session, blob_key: str) -> bool:
    return bool(session.scalar(select(exists().where(HeadVersion.blob_key == blob_key))))


def delete_version(session: Session, version: HeadVersion) -> None:
    session.execute(delete(HeadVersion).where(HeadVersion.id == version.id))


def list_heads(
    session: Session,
    *,
    tenant_id: str | None = None,
    owner: str | None = None,
    visibility: str | None = None,
    include_suspended: bool = True,
    q: str | None = None,
    label: str | None = None,
    after: tuple[str, str] | None = None,
    limit: int = 50,
) -> list[HeadRow]:
    """Heads ordered by (owner, name), keyset-paginated after ``after``."""
    stmt = select(Head, Tenant.name).join(Tenant, Tenant.id == Head.tenant_id)
    if tenant_id is not None:
        stmt = stmt.where(Head.tenant_id == tenant_id)
    if owner is not None:
        stmt = stmt.where(Tenant.name == owner)
    if visibility is not None:
        stmt = stmt.where(Head.visibility == visibility)
    if not include_suspended:
        stmt = stmt.where(Head.suspended.is_(False))
    if q:
        pattern = f"%{_like_escape(q.lower())}%"
        stmt = stmt.where(
            or_(
                func.lower(Head.name).like(pattern, escape="\\"),
                func.lower(Head.description).like(pattern, escape="\\"),
                func.lower(Tenant.name).like(pattern, escape="\\"),
            )
        )
    if label:
        # Labels are stored as json.dumps text on both backends; match the quoted label exactly.
        pattern = f"%{_like_escape(json.dumps(label))}%"
        stmt = stmt.where(
            exists().where(
                HeadVersion.head_id == Head.id,
                cast(HeadVersion.labels, String).like(pattern, escape="\\"),
            )
        )
    if after is not None:
        stmt = stmt.where(tuple_(Tenant.name, Head.name) > tuple_(*after))
    stmt = stmt.order_by(Tenant.name, Head.name).limit(limit)
    return [(h, o) for h, o in session.execute(stmt)]


def usage_counts(session: Session, head_ids: Sequence[str]) -> dict[str, int]:
    if not head_ids:
        return {}
    rows = session.execute(
        select(HeadUsage.head_id, func.sum(HeadUsage.count))
        .where(HeadUsage.head_id.in_(head_ids))
        .group_by(HeadUsage.head_id)
    )
    return {head_id: int(total or 0) for head_id, total in rows}


def versions_of(session: Session, head_ids: Iterable[str]) -> dict[str, list[HeadVersion]]:
    ids = list(head_ids)
    out: dict[str, list[HeadVersion]] = {i: [] for i in ids}
    if not ids:
        return out
    rows = session.scalars(
        select(HeadVersion).where(HeadVersion.head_id.in_(ids)).order_by(HeadVersion.version)
    )
    for v in rows:
        out[v.head_id].append(v)
    return out


def aliases_of(session: Session, head_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    ids = list(head_ids)
    out: dict[str, dict[str, int]] = {i: {} for i in ids}
    if not ids:
        return out
    rows = session.execute(
        select(HeadAlias.head_id, HeadAlias.alias, HeadAlias.version).where(
            HeadAlias.head_id.in_(ids)
        )
    )
    for head_id, alias, version in rows:
        out[head_id][alias] = version
    return out


def add_usage(session: Session, head_id: str, consumer_tenant_id: str, n: int) -> None:
    """Atomic upsert: concurrent predictions never lose a count."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now = utcnow()
    stmt = insert(HeadUsage).values(
        head_id=head_id, consumer_tenant_id=consumer_tenant_id, count=n, last_used_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[HeadUsage.head_id, HeadUsage.consumer_tenant_id],
        set_={"count": HeadUsage.count + n, "last_used_at": now},
    )
    session.execute(stmt)
