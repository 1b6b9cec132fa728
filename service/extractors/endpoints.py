"""Extractor registry routes: list, register, lifecycle, download for devices, moves of heads."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response, status
from starlette.concurrency import run_in_threadpool

from extractor.checkpoint import checkpoint_id
from extractor.client import ExtractorNotServed
from service.deps import (
    AdminDep,
    BlobsDep,
    ExtractorDep,
    OwnerDep,
    PredictDep,
    SessionDep,
    SettingsDep,
)
from service.errors import BadGateway, Conflict, Unprocessable
from service.extractors import moves, service
from service.extractors import repository as repo
from service.extractors.schemas import (
    EXTRACTOR_ID_PATTERN,
    BulkMoveCreate,
    BulkMoveOut,
    ExtractorCreate,
    ExtractorDetail,
    ExtractorList,
    ExtractorOut,
    ExtractorUpdate,
    HeadMoveCreate,
)
from service.jobs import service as jobs
from service.jobs.schemas import JobOut
from service.predict.extractor_errors import extractor_errors

log = logging.getLogger("headhub.extractors")

router = APIRouter(prefix="/v1/extractors", tags=["extractors"])
head_moves_router = APIRouter(prefix="/v1/heads", tags=["heads"])

ExtractorId = Annotated[
    str, Path(pattern=EXTRACTOR_ID_PATTERN, description="SHA-256 of the checkpoint file.")
]
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"description": "`extractor_not_found`: no such registered extractor."},
}
_BINARY: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The packed checkpoint, or an ONNX graph of the network.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
DEFAULT_INFO_TIMEOUT_S = 3.0


async def registry_default(session: Any, extractor: Any) -> Any:
    """The registry's default extractor; when there is none yet, the extractor processes'
    default is registered as it (first start after an upgrade). None while they are away."""
    found = await run_in_threadpool(repo.get_default, session)
    if found is not None or extractor is None:
        return found
    await run_in_threadpool(session.commit)  # no transaction held across the network call
    try:
        info = await asyncio.wait_for(extractor.info(), timeout=DEFAULT_INFO_TIMEOUT_S)
    except Exception as exc:  # down or slow: registered on a later call
        log.info("default extractor not registered yet: %s", exc)
        return None
    return await run_in_threadpool(service.ensure_default, session, info)


async def _checkpoint(extractor: Any, extractor_id: str) -> bytes:
    """The checkpoint file as the extractor processes serve it; their refusals as 422."""
    try:
        with extractor_errors(extractor):
            return bytes(await extractor.checkpoint(extractor_id))
    except ExtractorNotServed as exc:
        if exc.mismatch:
            raise Unprocessable(
                f"The extractor processes refuse to serve {extractor_id}: {exc.reason}",
                code="checkpoint_id_mismatch",
            ) from exc
        raise Unprocessable(
            f"No extractor process serves {extractor_id}: copy the checkpoint into their "
            "directory first (`headhub extractor install FILE`).",
            code="extractor_not_served",
        ) from exc


@router.get("", response_model=ExtractorList)
async def list_extractors(
    session: SessionDep,
    _: PredictDep,
    extractor: ExtractorDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the page before.")] = None,
) -> ExtractorList:
    """Every registered extractor, the default first, with how many versions and aliases are
    pinned to each."""
    await registry_default(session, extractor)
    return await run_in_threadpool(service.list_out, session, limit, cursor)


@router.get("/{extractor_id}", response_model=ExtractorDetail, responses=_PROBLEMS)
def get_extractor(extractor_id: ExtractorId, session: SessionDep, _: PredictDep) -> ExtractorDetail:
    """One extractor, with the progress of the latest bulk move of heads off it."""
    return service.detail(session, service.get_or_404(session, extractor_id))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExtractorOut,
    responses={
        409: {"description": "`extractor_exists`: already registered."},
        422: {
            "description": "`extractor_not_served`: no extractor process serves the id; "
            "`checkpoint_id_mismatch`: the file they serve under that id hashes otherwise."
        },
    },
)
async def register_extractor(
    body: ExtractorCreate,
    session: SessionDep,
    _: AdminDep,
    blobs: BlobsDep,
    extractor: ExtractorDep,
) -> ExtractorOut:
    """Register a checkpoint the extractor processes serve (admin). The API fetches the file
    from them and checks that its SHA-256 is the id before anything is stored."""
    if await run_in_threadpool(repo.get, session, body.id) is not None:
        raise Conflict(f"Extractor {body.id} is already registered.", code="extractor_exists")
    await run_in_threadpool(session.commit)  # no transaction held across the network call
    data = await _checkpoint(extractor, body.id)
    ext = await run_in_threadpool(service.register, session, blobs, body.id, body.note, data)
    return await run_in_threadpool(lambda: service.to_out(ext, repo.pinned_counts(session)))


@router.patch(
    "/{extractor_id}",
    response_model=ExtractorDetail,
    responses={
        **_PROBLEMS,
        409: {
            "description": "`extractor_in_use` (retiring while an alias or implicit version "
            "resolves to it; `heads` lists them), `extractor_is_default`, `extractor_not_active`."
        },
    },
)
def update_extractor(
    extractor_id: ExtractorId, body: ExtractorUpdate, session: SessionDep, _: AdminDep
) -> ExtractorDetail:
    """Make it the default, deprecate it (with a sunset date), retire it or bring it back."""
    ext = service.update(session, service.get_or_404(session, extractor_id), body)
    return service.detail(session, ext)


@router.post(
    "/{extractor_id}/moves",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BulkMoveOut,
    responses={
        **_PROBLEMS,
        409: {"description": "`same_extractor`, or the target is not active."},
    },
)
def bulk_move(
    extractor_id: ExtractorId,
    body: BulkMoveCreate,
    session: SessionDep,
    settings: SettingsDep,
    _: AdminDep,
) -> BulkMoveOut:
    """Queue one move job per head whose `production` (or newest) version is on this extractor
    (admin); progress in `GET /v1/extractors/{id}`."""
    source = service.get_or_404(session, extractor_id)
    move = moves.bulk_move(session, source, body, settings)
    return service.move_progress(session, move)


@router.get(
    "/{extractor_id}/download",
    response_class=Response,
    responses={**_BINARY, **_PROBLEMS},
)
async def download_extractor(
    extractor_id: ExtractorId,
    session: SessionDep,
    _: PredictDep,
    blobs: BlobsDep,
    extractor: ExtractorDep,
    format: Annotated[
        Literal["safetensors", "onnx"],
        Query(
            description="`safetensors`: the packed checkpoint; `onnx`: the network as "
            "sign and float ops, images (N, 3, H, W) normalised as `preprocessing` says in, "
            "features (N, D) out."
        ),
    ] = "safetensors",
) -> Response:
    """The extractor for on-device feature computation; its features feed
    `POST /v1/predict/features`."""
    ext = await run_in_threadpool(service.get_or_404, session, extractor_id)
    key = ext.blob_key
    await run_in_threadpool(session.commit)
    data: bytes | None = None
    if key is None or not await run_in_threadpool(blobs.exists, key):
        data = await _checkpoint(extractor, extractor_id)  # registered before copies were kept
        if checkpoint_id(data) != extractor_id:
            raise BadGateway(
                "The extractor processes served a file that does not hash to its id.",
                code="extractor_bad_response",
            )
        key = service.blob_key_for(extractor_id)
        await run_in_threadpool(blobs.put, key, data)
        await run_in_threadpool(_remember_blob, session, extractor_id, key)
    stem = f"extractor-{extractor_id[:12]}"
    if format == "onnx":
        body = await run_in_threadpool(_onnx, blobs, key, extractor_id, data)
        filename = f"{stem}.onnx"
    else:
        body = data if data is not None else await run_in_threadpool(blobs.get, key)
        filename = f"{stem}.safetensors"
    return Response(
        body,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "ETag": f'"{extractor_id}-{format}"',
        },
    )


def _remember_blob(session: Any, extractor_id: str, key: str) -> None:
    ext = repo.get(session, extractor_id)
    if ext is not None:
        ext.blob_key = key


def _onnx(blobs: Any, key: str, extractor_id: str, data: bytes | None) -> bytes:
    """The ONNX graph, exported once per extractor and exporter version, kept in the store."""
    from extractor.onnx_export import EXPORT_VERSION, checkpoint_to_onnx_bytes

    onnx_key = f"extractors/{extractor_id[:2]}/{extractor_id}.v{EXPORT_VERSION}.onnx"
    if blobs.exists(onnx_key):
        return bytes(blobs.get(onnx_key))
    graph = checkpoint_to_onnx_bytes(data if data is not None else blobs.get(key))
    blobs.put(onnx_key, graph)
    return graph


@head_moves_router.post(
    "/{owner}/{name}/moves",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={
        404: {"description": "No such head, version or extractor."},
        409: {"description": "`same_extractor`: the version is on that extractor already."},
    },
)
def move_head(
    owner: Annotated[str, Path(examples=["acme"])],
    name: Annotated[str, Path(examples=["flowers"])],
    body: HeadMoveCreate,
    session: SessionDep,
    settings: SettingsDep,
    principal: OwnerDep,
) -> JobOut:
    """Retrain a version on another extractor as a job: same head type, params, seed and
    validation split; the new version's `metrics.move` holds both versions' validation metrics
    on that split. `promote_if_not_worse` points `production` at it when its top-1 is not lower."""
    job = moves.move_head(session, principal, owner, name, body, settings)
    return jobs.out(session, job)
