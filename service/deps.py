"""Request dependencies, declared once as `Annotated` aliases.

Dependencies that only read the app's state are `async def`: FastAPI runs a plain `def`
dependency in a worker thread, and on a busy 2-core host each such hop cost a prediction more
than its head evaluation (bench/results/profile.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from service.auth import Principal, authenticate, authenticate_cached, require_scope
from service.db import session_scope
from service.settings import Settings
from service.storage.blobstore import BlobStore


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request: committed when the endpoint returns, rolled back on error.

    `scope="function"` below makes the commit happen before the response is sent, so a
    client never sees 2xx for a write that then failed to commit.
    """
    with session_scope(request.app.state.sessionmaker) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_principal(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    checked = getattr(request.state, "principal", None)
    if checked is not None:  # checked before the body was read (principal_before_body)
        return checked  # type: ignore[no-any-return]
    admin = settings.admin_key.get_secret_value() if settings.admin_key else None
    principal = authenticate(
        session, authorization, pepper=request.app.state.pepper, admin_key=admin
    )
    request.state.principal = principal
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        limiter.check_principal(principal)  # the key's and its tenant's buckets
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def cached_principal(request: Request) -> Principal | None:
    """`get_principal` on the event loop when the process's lookup cache knows the key (and the
    rate limits are in memory): no session, no thread. None: `principal_before_body` decides."""
    state = request.app.state
    lookups = getattr(state, "lookups", None)
    limiter = getattr(state, "rate_limiter", None)
    if lookups is None or (limiter is not None and limiter.remote):
        return None
    settings = state.settings
    admin = settings.admin_key.get_secret_value() if settings.admin_key else None
    principal = authenticate_cached(
        lookups, request.headers.get("authorization"), pepper=state.pepper, admin_key=admin
    )
    if principal is None:
        return None
    request.state.principal = principal
    if limiter is not None:
        limiter.check_principal(principal)
    return principal


def principal_before_body(request: Request) -> Principal:
    """`get_principal`, in a short transaction of its own, for a request whose body has not been
    read yet (`service.http.guard.BodyGuardMiddleware`); it leaves the principal in the request
    state, where `get_principal` finds it again for the endpoint."""
    state = request.app.state
    with session_scope(state.sessionmaker) as session:
        return get_principal(request, session, state.settings, request.headers.get("authorization"))


def _admin(p: PrincipalDep) -> Principal:
    return require_scope(p, "admin")


def _owner(p: PrincipalDep) -> Principal:
    return require_scope(p, "owner", "admin")


def _predict(p: PrincipalDep) -> Principal:
    return require_scope(p, "predict", "owner", "admin")


AdminDep = Annotated[Principal, Depends(_admin)]
OwnerDep = Annotated[Principal, Depends(_owner)]
PredictDep = Annotated[Principal, Depends(_predict)]


async def get_blobs(request: Request) -> BlobStore:
    return request.app.state.blobs  # type: ignore[no-any-return]


async def get_extractor(request: Request) -> Any:
    """The `extractor.client.ExtractorClient` built in the lifespan."""
    return request.app.state.extractor


BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
ExtractorDep = Annotated[Any, Depends(get_extractor)]


async def _predict_principal(request: Request) -> Principal:
    """`PredictDep` without a request session: the principal the body guard checked before the
    body (or, for a request it did not check, one short transaction of its own)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        from starlette.concurrency import run_in_threadpool

        principal = await run_in_threadpool(principal_before_body, request)
    return require_scope(principal, "predict", "owner", "admin")


# For endpoints that open their own sessions only when they need one (POST /v1/predict).
PredictPrincipalDep = Annotated[Principal, Depends(_predict_principal)]
