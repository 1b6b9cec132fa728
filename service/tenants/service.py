"""Tenant and key logic. Never commits: the request (or caller) owns the transaction."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.auth import Principal, generate_key
from service.db import utcnow
from service.errors import Conflict, NotFound
from service.tenants import repository as repo
from service.tenants.tables import ApiKey, Tenant


def create_tenant(session: Session, name: str) -> Tenant:
    if repo.get_tenant_by_name(session, name) is not None:
        raise Conflict(f"A tenant named '{name}' already exists.", code="tenant_exists")
    tenant = Tenant(name=name)
    session.add(tenant)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(f"A tenant named '{name}' already exists.", code="tenant_exists") from None
    return tenant


def tenant_for(session: Session, principal: Principal, name: str) -> Tenant:
    """The tenant `name` as seen by `principal`: admins see all, owners only their own (404)."""
    tenant = repo.get_tenant_by_name(session, name)
    if tenant is None or (not principal.is_admin and tenant.id != principal.tenant_id):
        raise NotFound(f"No tenant named '{name}'.", code="tenant_not_found")
    return tenant


def create_key(
    session: Session, tenant: Tenant, *, scope: str, name: str, pepper: bytes, max_keys: int
) -> tuple[ApiKey, str]:
    repo.lock_tenant(session, tenant.id)  # the cap holds when creations race
    if repo.count_active_keys(session, tenant.id) >= max_keys:
        raise Conflict(
            f"Tenant '{tenant.name}' has {max_keys} keys that are not revoked, the limit; "
            "revoke one first.",
            code="key_quota_exceeded",
        )
    key_id, full, secret_hash = generate_key(pepper)
    key = ApiKey(id=key_id, tenant_id=tenant.id, scope=scope, name=name, secret_hash=secret_hash)
    session.add(key)
    session.flush()
    return key, full


def revoke_key(session: Session, tenant: Tenant, key_id: str) -> None:
    key = repo.get_key(session, tenant.id, key_id)
    if key is None:
        raise NotFound(f"No key '{key_id}' for tenant '{tenant.name}'.", code="key_not_found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
