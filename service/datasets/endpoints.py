from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import (
    APIRouter,
    BackgroundTasks,
    Depends,
    Header,
    Path,
    Query,
    Request,
    Response,
    status,
)
from starlette.concurrency import run_in_threadpool

from extractor.imaging import ImageRejected
from service.datasets import repository as repo
from service.datasets import service, thumbnails
from service.datasets.schemas import (
    DatasetCreate,
    DatasetList,
    DatasetOut,
    ImageList,
    ImageOut,
    UploadResult,
)
from service.datasets.upload import (
    UPLOAD_OPENAPI,
    UPLOAD_RESPONSES,
    current_extractor_id,
    featurizer,
    read_upload,
    run_upload,
)
from service.deps import BlobsDep, OwnerDep, SessionDep, SettingsDep
from service.errors import NotFound, Unprocessable
from service.storage.blobstore import BlobNotFound, BlobStore, image_key

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

ExtractorIdDep = Annotated[str | None, Depends(current_extractor_id)]
Sha256 = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="The image's SHA-256 (hex).")]
TenantQuery = Annotated[
    str | None, Query(description="Admin keys only: the tenant (name) to act for.")
]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetOut)
def create_dataset(
    body: DatasetCreate,
    session: SessionDep,
    principal: OwnerDep,
    settings: SettingsDep,
    extractor_id: ExtractorIdDep,
    tenant: TenantQuery = None,
) -> DatasetOut:
    """Create an empty dataset; its name is unique within the tenant (409 otherwise), and a
    tenant holds at most `HEADHUB_MAX_DATASETS_PER_TENANT` (409 `dataset_quota_exceeded`)."""
    tenant_id = service.owner_tenant_id(session, principal, tenant)
    dataset = service.create_dataset(
        session,
        tenant_id,
        body.name,
        body.description,
        max_datasets=settings.max_datasets_per_tenant,
    )
    return service.describe(session, [dataset], extractor_id)[0]


@router.get("", response_model=DatasetList)
def list_datasets(
    session: SessionDep,
    principal: OwnerDep,
    extractor_id: ExtractorIdDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    tenant: TenantQuery = None,
) -> DatasetList:
    """The tenant's datasets, oldest first (an admin sees all, or one tenant's with `tenant`)."""
    tenant_id = (
        service.owner_tenant_id(session, principal, tenant)
        if tenant is not None or not principal.is_admin
        else None
    )
    after = service.decode_cursor(cursor) if cursor else None
    rows = repo.list_datasets(session, tenant_id, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return DatasetList(
        items=service.describe(session, rows, extractor_id),
        next_cursor=service.encode_cursor(rows[-1]) if more else None,
    )


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(
    dataset_id: str, session: SessionDep, principal: OwnerDep, extractor_id: ExtractorIdDep
) -> DatasetOut:
    """One dataset with `image_count`, `label_counts` and how many images have features ready
    for the extractor now serving (`features_ready` of `image_count`)."""
    dataset = service.get_dataset(session, principal, dataset_id)
    return service.describe(session, [dataset], extractor_id)[0]


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(
    dataset_id: str,
    request: Request,
    session: SessionDep,
    principal: OwnerDep,
    background: BackgroundTasks,
) -> Response:
    """Delete the dataset and its images; image bytes no other dataset holds are removed by
    `headhub gc` once they are older than its grace period."""
    shas = service.delete_dataset(session, principal, dataset_id)
    background.add_task(service.forget_features, request.app.state.sessionmaker, shas)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{dataset_id}/images",
    response_model=UploadResult,
    openapi_extra=UPLOAD_OPENAPI,
    responses=UPLOAD_RESPONSES,
)
async def upload_images(
    dataset_id: str,
    request: Request,
    session: SessionDep,
    principal: OwnerDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    background: BackgroundTasks,
) -> UploadResult:
    """Add images: `label` plus one or more `files` parts, or one `archive` zip whose top-level
    folders are the labels (`daisy/001.jpg`).

    Images are identified by the SHA-256 of their bytes: one already in the dataset counts as a
    duplicate. A bad file is listed in `rejected` and the good ones are kept (200), with one
    exception: when the request carries exactly one file and that file is bad, the request fails
    with the file's own status (413 too many pixels, 415 format not accepted, 422 truncated or
    not an image), naming the file. An unsafe archive (path traversal, absolute paths,
    backslashes, symlinks, encrypted or nested entries, forged sizes: 422; a zip bomb: 413) is
    refused as a whole and nothing is stored. Bodies over the size limit are 413, too many parts
    400, an oversized text field 413. A tenant over its image cap gets 409
    `image_quota_exceeded`.
    """
    limits = service.IngestLimits.from_settings(settings)
    dataset = await run_in_threadpool(service.get_dataset, session, principal, dataset_id)
    await run_in_threadpool(service.check_room, session, dataset, limits)
    # No lock and no pooled connection while the body streams in: a client trickling bytes must
    # not stall every other tenant (docs/threats.md). Images decode outside any transaction too;
    # only the final rows are written under the tenant's lock (`run_upload`).
    await run_in_threadpool(session.commit)
    upload = await read_upload(request, settings)
    try:
        outcome = await run_in_threadpool(
            partial(run_upload, session, blobs, dataset, upload, settings)
        )
    finally:
        await upload.close()
    if outcome.added and settings.featurize_on_upload:
        task = featurizer(request)
        if task is not None:
            background.add_task(task, dataset.id)
    return outcome.result()


@router.get("/{dataset_id}/images", response_model=ImageList)
def list_images(
    dataset_id: str,
    session: SessionDep,
    principal: OwnerDep,
    label: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$")] = None,
) -> ImageList:
    """The dataset's images by SHA-256, optionally one label's; `cursor` is the last hash seen."""
    dataset = service.get_dataset(session, principal, dataset_id)
    rows = repo.list_images(session, dataset.id, label=label, after=cursor, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return ImageList(
        items=[ImageOut.model_validate(r) for r in rows],
        next_cursor=rows[-1].sha256 if more else None,
    )


@router.delete("/{dataset_id}/images/{sha256}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(
    dataset_id: str,
    sha256: Sha256,
    request: Request,
    session: SessionDep,
    principal: OwnerDep,
    background: BackgroundTasks,
) -> Response:
    """Remove one image (e.g. a mislabeled one); re-upload it with the right label after."""
    service.delete_image(session, principal, dataset_id, sha256)
    background.add_task(service.forget_features, request.app.state.sessionmaker, [sha256])
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# Thumbnails are private (the key decides who may see them) and depend on the key: a browser
# shared by two tenants must not answer one's request from the other's cached copy.
THUMBNAIL_MAX_AGE_S = 86_400
_THUMBNAIL_HEADERS = {
    "ETag": {"description": "From the SHA-256 and the size.", "schema": {"type": "string"}},
    "Cache-Control": {"schema": {"type": "string"}},
}
_IMAGE = {"schema": {"type": "string", "format": "binary"}}
THUMBNAIL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image re-encoded to fit size x size: PNG if it has transparency, "
        "else JPEG.",
        "content": {"image/jpeg": _IMAGE, "image/png": _IMAGE},
        "headers": _THUMBNAIL_HEADERS,
    },
    304: {"description": "Not modified: `If-None-Match` names the current ETag."},
    404: {"description": "No such dataset (or another tenant's), or no such image in it."},
    422: {"description": "Bad SHA-256 or size, or stored bytes that no longer decode."},
}


def _thumbnail_limiter(request: Request) -> anyio.CapacityLimiter:
    state = request.app.state
    limiter = getattr(state, "thumbnail_limiter", None)
    if limiter is None:
        limiter = state.thumbnail_limiter = anyio.CapacityLimiter(thumbnails.CONCURRENCY)
    return limiter


def _render(blobs: BlobStore, sha256: str, size: int, max_pixels: int) -> thumbnails.Thumbnail:
    try:
        data = blobs.get(image_key(sha256))
    except BlobNotFound:  # the row outlived its bytes: nothing to show, as for a missing image
        raise NotFound(f"No bytes stored for image {sha256}.", code="image_not_found") from None
    try:
        return thumbnails.render(data, size, max_pixels=max_pixels)
    except ImageRejected as exc:
        raise Unprocessable(
            f"Image {sha256} cannot be previewed: {exc.reason}", code="thumbnail_unavailable"
        ) from None


@router.get(
    "/{dataset_id}/images/{sha256}/thumbnail",
    response_class=Response,
    responses=THUMBNAIL_RESPONSES,
)
async def image_thumbnail(
    dataset_id: str,
    sha256: Sha256,
    request: Request,
    session: SessionDep,
    principal: OwnerDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    size: Annotated[
        int,
        Query(
            ge=thumbnails.MIN_SIZE,
            le=thumbnails.MAX_SIZE,
            description="Longest side in pixels; the image is never enlarged.",
        ),
    ] = thumbnails.DEFAULT_SIZE,
    if_none_match: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """A small preview of one image of the dataset, decoded from the stored bytes and encoded
    afresh (never the uploaded bytes themselves). Cacheable by the browser that asked (`private`,
    `ETag`; `If-None-Match` answers 304)."""
    await run_in_threadpool(service.get_image, session, principal, dataset_id, sha256)
    await run_in_threadpool(session.commit)  # no pooled connection held while decoding
    tag = thumbnails.etag(sha256, size)
    headers = {
        "ETag": tag,
        "Cache-Control": f"private, max-age={THUMBNAIL_MAX_AGE_S}",
        "Vary": "Authorization",
        "X-Content-Type-Options": "nosniff",
    }
    if thumbnails.matches(if_none_match, tag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    thumb = await anyio.to_thread.run_sync(
        _render, blobs, sha256, size, settings.max_image_pixels, limiter=_thumbnail_limiter(request)
    )
    return Response(thumb.data, media_type=thumb.media_type, headers=headers)
