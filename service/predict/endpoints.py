"""`POST /v1/predict` (images) and `POST /v1/predict/features` (client-computed features)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from extractor.web.requests import current_request_id
from service.deps import BlobsDep, ExtractorDep, PredictDep, SessionDep, SettingsDep
from service.errors import BadGateway, PayloadTooLarge
from service.heads.deps import HeadCacheDep
from service.predict import service
from service.predict.extractor_errors import extractor_errors
from service.predict.schemas import FeaturesRequest, PredictResponse

router = APIRouter(prefix="/v1/predict", tags=["prediction"])

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"description": "A named head, version or alias does not exist or is not visible."},
    403: {"description": "A named head is suspended."},
    409: {"description": "`extractor_mismatch`: a head expects another extractor or width."},
    422: {"description": "Malformed reference, image or features."},
}


async def _features(extractor: Any, files: list[tuple[str, bytes]], request_id: str) -> Any:
    """Call the extractor and map its failures: down -> 503, garbage -> 502, bad image -> 4xx."""
    with extractor_errors(extractor):
        return await extractor.features(files, request_id=request_id)


def _check_batch(batch: Any, n: int) -> None:
    """The client validates the wire format; these are the invariants prediction relies on."""
    floats = np.asarray(batch.floats)
    if floats.ndim != 2 or floats.shape[0] != n or not np.isfinite(floats).all():
        raise BadGateway(
            "The feature extractor returned unusable features.", code="extractor_bad_response"
        )


@router.post("", response_model=PredictResponse, responses=_PROBLEMS)
async def predict(
    request: Request,
    session: SessionDep,
    principal: PredictDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    cache: HeadCacheDep,
    extractor: ExtractorDep,
    heads: Annotated[
        str,
        Query(
            description="Comma-separated head references: `<owner>/<name>[:<version>|@<alias>]`.",
            examples=["acme/flowers@production,globex/colours:1"],
        ),
    ],
    files: Annotated[list[UploadFile], File(description="One or more images.")],
    top_k: Annotated[int, Query(ge=1, le=100)] = 5,
) -> PredictResponse:
    """Score images with one or more heads; each image goes through the extractor once."""
    if len(files) > settings.max_files_per_request:
        raise PayloadTooLarge(
            f"At most {settings.max_files_per_request} files per request.", code="too_many_files"
        )
    planned = await run_in_threadpool(service.plan, session, blobs, cache, principal, [heads])
    # End the read transaction (keeping the key's last-use stamp) before the network call, so no
    # database lock or connection is held while the extractor works.
    await run_in_threadpool(session.commit)
    parts = [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
    request_id = current_request_id() or uuid.uuid4().hex  # the id the response echoes
    batch = await _features(extractor, parts, request_id)
    service.check_extractor(planned, batch.extractor_id)
    _check_batch(batch, len(parts))
    names = [name for name, _ in parts]
    results = await run_in_threadpool(
        service.run_heads, planned, batch.floats, batch.bits, names, top_k
    )
    await run_in_threadpool(service.record_usage, session, planned, principal, len(parts))
    return PredictResponse(extractor_id=batch.extractor_id, results=results)


@router.post("/features", response_model=PredictResponse, responses=_PROBLEMS)
def predict_features(
    body: FeaturesRequest,
    session: SessionDep,
    principal: PredictDep,
    blobs: BlobsDep,
    cache: HeadCacheDep,
) -> PredictResponse:
    """Run only the heads on features the client computed with its own copy of the extractor."""
    planned = service.plan(session, blobs, cache, principal, body.heads)
    service.check_extractor(planned, body.extractor_id)
    floats, bits = service.parse_feature_input(body.features, planned)
    names = [f"features[{i}]" for i in range(len(body.features))]
    results = service.run_heads(planned, floats, bits, names, body.top_k)
    service.record_usage(session, planned, principal, len(names))
    return PredictResponse(extractor_id=body.extractor_id, results=results)
