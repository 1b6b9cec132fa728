"""API keys: `hh_<key_id>_<secret>`; only HMAC-SHA256(pepper, secret) is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy.orm import Session

from service.db import as_utc, utcnow
from service.errors import Forbidden, Unauthorized

Scope = Literal["admin", "owner", "predict"]
KEY_PREFIX = "hh"
SECRET_BYTES = 32  # 256 bits of secret, well over the 128 the design asks for
LAST_USED_RESOLUTION = timedelta(minutes=1)  # don't write on every request


@dataclass(frozen=True)
class Principal:
    key_id: str
    scope: Scope
    tenant_id: str | None  # None for the platform admin
    tenant_name: str | None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


def hash_secret(secret: str, pepper: bytes) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def generate_key(pepper: bytes) -> tuple[str, str, str]:
    """-> (key_id, full key shown once, stored hash)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secret}", hash_secret(secret, pepper)


def parse_key(raw: str) -> tuple[str, str] | None:
    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def authenticate(
    session: Session, authorization: str | None, *, pepper: bytes, admin_key: str | None
) -> Principal:
    """Resolve a bearer header to a principal. Every failure gives the same 401 body."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized()
    raw = authorization.removeprefix("Bearer ").strip()
    if admin_key and hmac.compare_digest(raw.encode(), admin_key.encode()):
        return Principal(key_id="admin", scope="admin", tenant_id=None, tenant_name=None)
    parsed = parse_key(raw)
    if parsed is None:
        raise Unauthorized()
    key_id, secret = parsed
    from service.http.invalidation import cache_of
    from service.tenants.repository import get_key_with_tenant

    # A good key seen lately, from the process's cache (dropped on revocation: see
    # service/http/invalidation.py); stale once its last-use stamp needs writing again.
    cache = cache_of(session)
    now = utcnow()
    hit: _CachedKey | None = cache.get(("key", key_id)) if cache is not None else None
    if hit is not None and now - hit.last_used_at <= LAST_USED_RESOLUTION:
        if not hmac.compare_digest(hash_secret(secret, pepper), hit.secret_hash):
            raise Unauthorized()
        return hit.principal
    token = cache.token() if cache is not None else 0
    found = get_key_with_tenant(session, key_id)
    expected = found[0].secret_hash if found else hash_secret("x", pepper)  # equal work either way
    ok = hmac.compare_digest(hash_secret(secret, pepper), expected)
    if not found or not ok or found[0].revoked_at is not None:
        raise Unauthorized()
    key, tenant = found
    if key.last_used_at is None or now - as_utc(key.last_used_at) > LAST_USED_RESOLUTION:
        key.last_used_at = now
    scope: Scope = key.scope  # type: ignore[assignment]
    principal = Principal(key_id=key.id, scope=scope, tenant_id=tenant.id, tenant_name=tenant.name)
    if cache is not None:
        stamp = as_utc(key.last_used_at)
        cache.put(("key", key_id), _CachedKey(principal, key.secret_hash, stamp), token)
    return principal


def authenticate_cached(
    lookups: Any, authorization: str | None, *, pepper: bytes, admin_key: str | None
) -> Principal | None:
    """`authenticate` for a key the process's cache knows (or the admin key), without a session
    or a thread: the principal, `Unauthorized` for a wrong secret, or None when only the
    database can tell (unknown key, a last-use stamp due, a malformed header: `authenticate`
    then answers, with its one 401 body for every failure)."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    raw = authorization.removeprefix("Bearer ").strip()
    if admin_key and hmac.compare_digest(raw.encode(), admin_key.encode()):
        return Principal(key_id="admin", scope="admin", tenant_id=None, tenant_name=None)
    parsed = parse_key(raw)
    if parsed is None:
        return None
    key_id, secret = parsed
    hit: _CachedKey | None = lookups.get(("key", key_id))
    if hit is None or utcnow() - hit.last_used_at > LAST_USED_RESOLUTION:
        return None
    if not hmac.compare_digest(hash_secret(secret, pepper), hit.secret_hash):
        raise Unauthorized()
    return hit.principal


@dataclass(frozen=True)
class _CachedKey:
    principal: Principal
    secret_hash: str
    last_used_at: datetime


def require_scope(principal: Principal, *allowed: Scope) -> Principal:
    if principal.scope not in allowed:
        raise Forbidden(
            f"This endpoint needs a key with scope {' or '.join(allowed)}; this key is "
            f"'{principal.scope}'.",
            code="insufficient_scope",
        )
    return principal
