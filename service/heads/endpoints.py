"""Head registry routes (thin: logic in service.py, SQL in repository.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import StreamingResponse

from service.deps import AdminDep, BlobsDep, OwnerDep, PredictDep, SessionDep, SettingsDep
from service.errors import Forbidden, Unprocessable
from service.heads import repository as repo
from service.heads import service, views
from service.heads.deps import HeadCacheDep, UsageFlushedDep
from service.heads.onnx_export import head_to_onnx_bytes
from service.heads.refs import ALIAS_PATTERN, is_valid_alias
from service.heads.schemas import (
    AdminHeadUpdate,
    AliasOut,
    AliasUpdate,
    HeadList,
    HeadOut,
    HeadUpdate,
    HeadVersionOut,
)

router = APIRouter(prefix="/v1/heads", tags=["heads"])
admin_router = APIRouter(prefix="/v1/admin/heads", tags=["admin"])

Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page.")]
Owner = Annotated[str, Path(description="Owning tenant's name.", examples=["acme"])]
Name = Annotated[str, Path(description="Head name.", examples=["flowers"])]
Version = Annotated[int, Path(ge=1, examples=[3])]
Alias = Annotated[str, Path(description=f"Alias name, {ALIAS_PATTERN}", examples=["production"])]

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such head, version or alias (or another tenant's private head)."},
    403: {"description": "Suspended head, or a public head changed by a non-owner."},
}
_BINARY: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The head file: safetensors or ONNX, metadata included.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.get("", response_model=HeadList)
def list_heads(
    _flushed: UsageFlushedDep,
    session: SessionDep,
    principal: PredictDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> HeadList:
    """The caller's heads by name (for an admin: every tenant's, by owner and name)."""
    rows = repo.list_heads(
        session,
        tenant_id=None if principal.is_admin else principal.tenant_id,
        after=views.parse_cursor(cursor),
        limit=limit + 1,
    )
    return views.head_list(session, rows, limit)


@router.get("/{owner}/{name}", response_model=HeadOut, responses=_PROBLEMS)
def get_head(
    _flushed: UsageFlushedDep, owner: Owner, name: Name, session: SessionDep, principal: PredictDep
) -> HeadOut:
    """A head with its aliases and versions: own, public, or any for an admin. Another tenant's
    public head shows no dataset or job ids and no per-class image counts."""
    head = service.find_visible(session, principal, owner, name)
    return views.head_out(session, owner, head, full=views.sees_everything(principal, head))


@router.patch("/{owner}/{name}", response_model=HeadOut, responses=_PROBLEMS)
def update_head(
    owner: Owner, name: Name, body: HeadUpdate, session: SessionDep, principal: OwnerDep
) -> HeadOut:
    """Change visibility or description (owner or admin). Making a head private revokes use."""
    head = service.find_writable(session, principal, owner, name)
    service.update_head(head, visibility=body.visibility, description=body.description)
    session.flush()
    return views.head_out(session, owner, head)


@router.get(
    "/{owner}/{name}/versions/{version}", response_model=HeadVersionOut, responses=_PROBLEMS
)
def get_version(
    owner: Owner, name: Name, version: Version, session: SessionDep, principal: PredictDep
) -> HeadVersionOut:
    """One immutable version: type, labels, extractor, metrics, provenance and blob digest
    (provenance and per-class image counts for its owner only)."""
    head = service.find_visible(session, principal, owner, name)
    v = service.get_version_or_404(session, head, owner, version)
    return views.version_out(
        owner,
        head,
        v,
        repo.get_aliases(session, head.id),
        full=views.sees_everything(principal, head),
    )


@router.delete(
    "/{owner}/{name}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_PROBLEMS, 409: {"description": "An alias points at this version."}},
)
def delete_version(
    owner: Owner,
    name: Name,
    version: Version,
    session: SessionDep,
    principal: OwnerDep,
    blobs: BlobsDep,
    cache: HeadCacheDep,
) -> Response:
    """Delete a version (owner or admin); refused with 409 while an alias points at it."""
    head = service.find_writable(session, principal, owner, name)
    service.delete_version(session, blobs, cache, head, owner, version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/{owner}/{name}/aliases/{alias}", response_model=AliasOut, responses=_PROBLEMS)
def put_alias(
    owner: Owner,
    name: Name,
    alias: Alias,
    body: AliasUpdate,
    session: SessionDep,
    settings: SettingsDep,
    principal: OwnerDep,
) -> AliasOut:
    """Point an alias (`production`, `staging`, any name) at a version (owner or admin); a
    tenant holds at most `HEADHUB_MAX_ALIASES_PER_TENANT` aliases (409)."""
    if not is_valid_alias(alias):
        raise Unprocessable(
            f"'{alias}' is not a valid alias ({ALIAS_PATTERN}).", code="invalid_alias"
        )
    head = service.find_writable(session, principal, owner, name)
    row = service.set_alias(
        session, head, owner, alias, body.version, max_aliases=settings.max_aliases_per_tenant
    )
    return AliasOut(alias=row.alias, version=row.version, ref=f"{owner}/{head.name}:{row.version}")


@router.delete(
    "/{owner}/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT, responses=_PROBLEMS
)
def delete_alias(
    owner: Owner, name: Name, alias: Alias, session: SessionDep, principal: OwnerDep
) -> Response:
    """Remove an alias (owner or admin); bare references then use the newest version."""
    head = service.find_writable(session, principal, owner, name)
    service.delete_alias(session, head, owner, alias)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{owner}/{name}/versions/{version}/export",
    response_class=Response,
    responses={**_BINARY, **_PROBLEMS},
)
def export_version(
    owner: Owner,
    name: Name,
    version: Version,
    session: SessionDep,
    principal: PredictDep,
    blobs: BlobsDep,
    cache: HeadCacheDep,
    format: Annotated[
        Literal["safetensors", "onnx"], Query(description="File format.")
    ] = "safetensors",
) -> Response:
    """The head alone, with labels, `extractor_id` and preprocessing in the file's metadata:
    what an app ships next to an on-device copy of the extractor."""
    head = service.find_visible(session, principal, owner, name)
    if head.suspended:
        raise Forbidden(f"The head '{owner}/{name}' is suspended.", code="head_suspended")
    v = service.get_version_or_404(session, head, owner, version)
    stem = f"{owner}-{head.name}-v{v.version}"
    if format == "onnx":
        data = head_to_onnx_bytes(
            service.load_head(blobs, cache, v), name=f"{owner}/{head.name}:{v.version}"
        )
        filename = f"{stem}.onnx"
    else:
        # Streamed from the blob store as it is read (an S3 object is never held whole here).
        filename = f"{stem}.safetensors"
        return StreamingResponse(
            _chunks(blobs.open(v.blob_key)),
            media_type="application/octet-stream",
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                "ETag": f'"{v.sha256}-{format}"',
                "Content-Length": str(v.size_bytes),
            },
        )
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "ETag": f'"{v.sha256}-{format}"',
        },
    )


def _chunks(stream: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(size):
            yield chunk


@admin_router.get("", response_model=HeadList)
def admin_list_heads(
    session: SessionDep,
    _: AdminDep,
    owner: Annotated[str | None, Query(description="Only this tenant's heads.")] = None,
    visibility: Annotated[Literal["private", "public"] | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> HeadList:
    """Every head of every tenant (admin), filterable by owner and visibility."""
    rows = repo.list_heads(
        session,
        owner=owner,
        visibility=visibility,
        after=views.parse_cursor(cursor),
        limit=limit + 1,
    )
    return views.head_list(session, rows, limit)


@admin_router.patch("/{owner}/{name}", response_model=HeadOut, responses=_PROBLEMS)
def admin_update_head(
    owner: Owner, name: Name, body: AdminHeadUpdate, session: SessionDep, principal: AdminDep
) -> HeadOut:
    """Suspend or reinstate a head (admin): a suspended head answers 403 `head_suspended`."""
    head = service.find_visible(session, principal, owner, name)
    head.suspended = body.suspended
    session.flush()
    return views.head_out(session, owner, head)
