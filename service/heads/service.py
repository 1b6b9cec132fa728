"""Head registry logic: registering versions, resolving references, permissions. Never commits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.auth import Principal
from service.db import utcnow
from service.errors import Conflict, Forbidden, NotFound, Unprocessable
from service.heads import repository as repo
from service.heads.cache import HeadCache
from service.heads.headfile import (
    HEAD_TYPES,
    HeadFile,
    HeadFormatError,
    decode_head,
    encode_head,
    infer_feature_dim,
    to_numpy,
)

if TYPE_CHECKING:
    from service.http.invalidation import LookupCache
from service.heads.refs import (
    HeadRef,
    InvalidHeadRef,
    UnresolvedRef,
    is_valid_head_name,
    version_to_use,
)
from service.heads.tables import Head, HeadAlias, HeadVersion
from service.storage.blobstore import BlobNotFound, BlobStore
from service.tenants.repository import lock_tenant

ALIAS_IN_USE = "version_aliased"


@dataclass(frozen=True)
class ResolvedHead:
    """A reference resolved to one immutable version, ready to evaluate."""

    head: Head
    owner: str
    version: HeadVersion

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.head.name}:{self.version.version}"


def blob_key_for(sha256: str) -> str:
    return f"heads/{sha256[:2]}/{sha256}.safetensors"


def register_version(
    session: Session,
    blobs: BlobStore,
    *,
    tenant_id: str,
    head_name: str,
    head_type: str,
    labels: list[str],
    extractor_id: str,
    weights: dict[str, torch.Tensor],
    metrics: dict[str, Any],
    dataset_id: str | None,
    job_id: str | None,
    preprocessing: dict[str, Any],
    feature_dim: int | None = None,
    max_heads: int | None = None,
) -> HeadVersion:
    """Add the next version of ``tenant_id``'s head ``head_name`` (created if missing).

    The blob is written first (temp name, then renamed to its content address), the rows are only
    flushed: the version becomes visible when the caller's transaction commits, and a rollback
    leaves at most an unreferenced blob. ``feature_dim`` defaults to ``metrics["feature_dim"]``,
    else the weights' width (a binary head's packed width gives only a multiple of 8).
    """
    if not is_valid_head_name(head_name):
        raise Unprocessable(f"'{head_name}' is not a valid head name.", code="invalid_head_name")
    if head_type not in HEAD_TYPES:
        raise Unprocessable(f"Unknown head_type '{head_type}'.", code="invalid_head_type")
    if not labels or len(set(labels)) != len(labels):
        raise Unprocessable("Labels must be a non-empty list of distinct names.", code="bad_labels")
    arrays = to_numpy(weights)
    try:
        dim = int(feature_dim or metrics.get("feature_dim") or infer_feature_dim(head_type, arrays))
        created = utcnow()
        data = encode_head(
            HeadFile(
                head_type=head_type,
                labels=[str(x) for x in labels],
                extractor_id=extractor_id,
                feature_dim=dim,
                preprocessing=preprocessing,
                created_at=created.isoformat(),
                weights=arrays,
            )
        )
    except HeadFormatError as exc:
        raise Unprocessable(f"Invalid {head_type} head weights: {exc}", code="bad_weights") from exc
    sha = hashlib.sha256(data).hexdigest()
    key = blob_key_for(sha)
    blobs.put(key, data)

    head = _get_or_create_head(session, tenant_id, head_name, max_heads=max_heads)
    number = repo.next_version_number(session, head.id)
    version = HeadVersion(
        head_id=head.id,
        version=number,
        head_type=head_type,
        labels=list(labels),
        extractor_id=extractor_id,
        feature_dim=dim,
        metrics=metrics,
        dataset_id=dataset_id,
        job_id=job_id,
        blob_key=key,
        size_bytes=len(data),
        sha256=sha,
        created_at=created,
    )
    session.add(version)
    session.flush()
    return version


def _get_or_create_head(
    session: Session, tenant_id: str, name: str, *, max_heads: int | None = None
) -> Head:
    head = repo.get_head_by_tenant(session, tenant_id, name)
    if head is not None:
        return head
    if max_heads is not None:
        check_head_room(session, tenant_id, max_heads)
    try:
        with session.begin_nested():
            head = Head(tenant_id=tenant_id, name=name, version_counter=0)
            session.add(head)
            session.flush()
        return head
    except IntegrityError:  # created by a concurrent registration: use theirs
        head = repo.get_head_by_tenant(session, tenant_id, name)
        if head is None:
            raise
        return head


def check_head_room(session: Session, tenant_id: str, max_heads: int) -> None:
    """409 `head_quota_exceeded` when the tenant has `max_heads` heads (a new one would pass
    the cap); under the tenant's lock, so racing registrations cannot pass it either."""
    lock_tenant(session, tenant_id)
    if repo.count_heads(session, tenant_id) >= max_heads:
        raise Conflict(
            f"This tenant has {max_heads} heads, the limit; delete one first.",
            code="head_quota_exceeded",
        )


# --- access -------------------------------------------------------------------------------------


def _owns(principal: Principal, head: Head) -> bool:
    return principal.tenant_id is not None and principal.tenant_id == head.tenant_id


def _not_found(owner: str, name: str) -> NotFound:
    return NotFound(f"No head '{owner}/{name}'.", code="head_not_found")


def _suspended(owner: str, name: str) -> Forbidden:
    return Forbidden(f"The head '{owner}/{name}' is suspended.", code="head_suspended")


def find_visible(session: Session, principal: Principal, owner: str, name: str) -> Head:
    """A head the principal may see: its own, any as admin, or a public one (else 404)."""
    row = repo.get_head(session, owner, name)
    if row is None:
        raise _not_found(owner, name)
    head = row[0]
    if principal.is_admin or _owns(principal, head):
        return head
    if head.visibility != "public":
        raise _not_found(owner, name)
    if head.suspended:
        raise _suspended(owner, name)
    return head


def find_writable(session: Session, principal: Principal, owner: str, name: str) -> Head:
    """A head the principal may change: its own or any as admin; a visible public one is 403."""
    head = find_visible(session, principal, owner, name)
    if not (principal.is_admin or _owns(principal, head)):
        raise Forbidden(f"Only the owner of '{owner}/{name}' may change it.", code="not_head_owner")
    return head


def get_version_or_404(session: Session, head: Head, owner: str, version: int) -> HeadVersion:
    found = repo.get_version(session, head.id, version)
    if found is None:
        raise NotFound(
            f"Head '{owner}/{head.name}' has no version {version}.", code="head_version_not_found"
        )
    return found


def resolve(session: Session, principal: Principal, ref: HeadRef) -> ResolvedHead:
    """Resolve a reference for use (predict, export): also refuses suspended heads to everyone."""
    owner = ref.owner or principal.tenant_name
    if owner is None:
        raise Unprocessable(
            f"'{ref}': an admin key must name the owner (<owner>/<name>).", code="invalid_head_ref"
        )
    head = find_visible(session, principal, owner, ref.name)
    if head.suspended:
        raise _suspended(owner, ref.name)
    alias = repo.get_alias(session, head.id, ref.effective_alias) if ref.version is None else None

    def newest() -> int | None:
        found = repo.newest_version(session, head.id)
        return found.version if found is not None else None

    try:
        number = version_to_use(
            ref, alias_target=alias.version if alias is not None else None, newest=newest
        )
    except UnresolvedRef as e:
        raise NotFound(f"Head '{owner}/{ref.name}' {e.reason}.", code=e.code) from None
    version = get_version_or_404(session, head, owner, number)
    return ResolvedHead(head=head, owner=owner, version=version)


@dataclass(frozen=True)
class ResolvedVersion:
    """A resolution as plain values, safe to keep beyond its session (the lookup cache)."""

    head_id: str
    ref: str  # owner/name:version
    id: str  # the version's id: the head-weight cache's key
    blob_key: str


def _resolution_key(principal: Principal, ref: HeadRef) -> tuple[object, ...]:
    return ("ref", principal.tenant_id, principal.scope, principal.tenant_name, str(ref))


def resolve_cached(
    lookups: LookupCache, principal: Principal, ref: HeadRef
) -> ResolvedVersion | None:
    """The cached resolution of `ref` for `principal`, or None (then `resolve_for_use`): the
    prediction's path on the event loop, with no session and no thread."""
    return lookups.get(_resolution_key(principal, ref))  # type: ignore[no-any-return]


def resolve_for_use(session: Session, principal: Principal, ref: HeadRef) -> ResolvedVersion:
    """`resolve`, through the API process's lookup cache when the session carries one: entries
    are dropped when a head, alias, version or key changes in any process (refusals are never
    cached), see service/http/invalidation.py."""
    from service.http.invalidation import cache_of

    cache = cache_of(session)
    key = _resolution_key(principal, ref)
    hit: ResolvedVersion | None = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit
    token = cache.token() if cache is not None else 0
    r = resolve(session, principal, ref)
    found = ResolvedVersion(r.head.id, r.ref, r.version.id, r.version.blob_key)
    if cache is not None:
        cache.put(key, found, token)
    return found


def invalid_ref(exc: InvalidHeadRef) -> Unprocessable:
    return Unprocessable(str(exc), code="invalid_head_ref")


# --- changes ------------------------------------------------------------------------------------


def set_alias(
    session: Session,
    head: Head,
    owner: str,
    alias: str,
    version: int,
    *,
    max_aliases: int | None = None,
) -> HeadAlias:
    get_version_or_404(session, head, owner, version)
    row = repo.get_alias(session, head.id, alias)
    if row is None:
        if max_aliases is not None:
            lock_tenant(session, head.tenant_id)  # the cap holds when requests race
            if repo.count_aliases(session, head.tenant_id) >= max_aliases:
                raise Conflict(
                    f"Tenant '{owner}' has {max_aliases} aliases, the limit; delete one first.",
                    code="alias_quota_exceeded",
                )
        row = HeadAlias(head_id=head.id, alias=alias, version=version)
        session.add(row)
    else:
        row.version = version
    head.updated_at = utcnow()
    session.flush()
    return row


def delete_alias(session: Session, head: Head, owner: str, alias: str) -> None:
    row = repo.get_alias(session, head.id, alias)
    if row is None:
        raise NotFound(
            f"Head '{owner}/{head.name}' has no alias '{alias}'.", code="head_alias_not_found"
        )
    session.delete(row)
    session.flush()


def update_head(head: Head, *, visibility: str | None, description: str | None) -> Head:
    if visibility is not None:
        head.visibility = visibility
    if description is not None:
        head.description = description
    head.updated_at = utcnow()
    return head


def delete_version(
    session: Session, blobs: BlobStore, cache: HeadCache | None, head: Head, owner: str, number: int
) -> None:
    """Delete one version; refused while an alias points at it. The blob goes if unshared."""
    version = get_version_or_404(session, head, owner, number)
    aliases = repo.aliases_of_version(session, head.id, number)
    if aliases:
        raise Conflict(
            f"Version {number} of '{owner}/{head.name}' is aliased as "
            f"{', '.join(sorted(aliases))}; move the alias first.",
            code=ALIAS_IN_USE,
        )
    repo.delete_version(session, version)
    session.flush()
    if cache is not None:
        cache.discard(version.id)
    if not repo.blob_in_use(session, version.blob_key):
        _delete_blob_after_commit(session, blobs, version.blob_key)


def _delete_blob_after_commit(session: Session, blobs: BlobStore, key: str) -> None:
    """Remove the file only once the deletion is durable: a rollback must find its blob."""
    state = {"rolled_back": False}

    def _rolled_back(_: Session) -> None:
        state["rolled_back"] = True

    def _committed(_: Session) -> None:
        if not state["rolled_back"]:
            blobs.delete(key)

    event.listen(session, "after_soft_rollback", lambda s, _t: _rolled_back(s), once=True)
    event.listen(session, "after_commit", _committed, once=True)


def load_head(
    blobs: BlobStore, cache: HeadCache, version: HeadVersion | ResolvedVersion
) -> HeadFile:
    """The decoded head for a version: from the LRU, else from the blob store."""

    def load() -> HeadFile:
        try:
            return decode_head(blobs.get(version.blob_key))
        except BlobNotFound:  # deleted between resolving and loading
            raise NotFound(
                "That head version was just deleted.", code="head_version_not_found"
            ) from None

    return cache.get_or_load(version.id, load)
