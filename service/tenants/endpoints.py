from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from service.deps import AdminDep, OwnerDep, SessionDep, SettingsDep
from service.tenants import repository as repo
from service.tenants import service
from service.tenants.schemas import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    TenantCreate,
    TenantList,
    TenantOut,
)

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TenantOut)
def create_tenant(body: TenantCreate, session: SessionDep, _: AdminDep) -> TenantOut:
    """Create a tenant (admin)."""
    return TenantOut.model_validate(service.create_tenant(session, body.name))


@router.get("", response_model=TenantList)
def list_tenants(
    session: SessionDep,
    _: AdminDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> TenantList:
    """All tenants, by name (admin). `cursor` is the last name of the previous page."""
    rows = repo.list_tenants(session, after=cursor, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return TenantList(
        items=[TenantOut.model_validate(t) for t in rows],
        next_cursor=rows[-1].name if more else None,
    )


@router.post("/{tenant}/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create_key(
    tenant: str,
    body: KeyCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: OwnerDep,
) -> KeyCreated:
    """Issue a key. The full key is in this response only; only a keyed hash is stored. A tenant
    holds at most `HEADHUB_MAX_KEYS_PER_TENANT` keys that are not revoked (409)."""
    t = service.tenant_for(session, principal, tenant)
    key, full = service.create_key(
        session,
        t,
        scope=body.scope,
        name=body.name,
        pepper=request.app.state.pepper,
        max_keys=settings.max_keys_per_tenant,
    )
    return KeyCreated(**KeyOut.model_validate(key).model_dump(), key=full)


@router.get("/{tenant}/keys", response_model=KeyList)
def list_keys(tenant: str, session: SessionDep, principal: OwnerDep) -> KeyList:
    """The tenant's keys, without secrets."""
    t = service.tenant_for(session, principal, tenant)
    return KeyList(items=[KeyOut.model_validate(k) for k in repo.list_keys(session, t.id)])


@router.delete("/{tenant}/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(tenant: str, key_id: str, session: SessionDep, principal: OwnerDep) -> Response:
    """Revoke a key; it stops working at once."""
    t = service.tenant_for(session, principal, tenant)
    service.revoke_key(session, t, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
