"""All SQL about tenants and keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.tenants.tables import ApiKey, Tenant


def get_key_with_tenant(session: Session, key_id: str) -> tuple[ApiKey, Tenant] | None:
    row = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.id == key_id)
    ).first()
    return (row[0], row[1]) if row else None


def get_tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def list_tenants(session: Session, *, after: str | None, limit: int) -> list[Tenant]:
    q = select(Tenant).order_by(Tenant.name).limit(limit)
    if after:
        q = q.where(Tenant.name > after)
    return list(session.scalars(q))


def list_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    return list(
        session.scalars(
            select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
        )
    )


def get_key(session: Session, tenant_id: str, key_id: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.id == key_id))


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialise a tenant's quota checks with the inserts they allow (count, then add): a row
    lock on PostgreSQL; on SQLite every transaction is BEGIN IMMEDIATE, which already does."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def count_active_keys(session: Session, tenant_id: str) -> int:
    from sqlalchemy import func

    return int(
        session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None))
        )
        or 0
    )
