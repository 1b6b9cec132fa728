"""`POST /v1/predict` (images) and `POST /v1/predict/features` (client-computed features)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Collection
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Query, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from extractor.client import ExtractorNotServed
from extractor.web.requests import current_request_id
from service.db import session_scope
from service.deps import (
    BlobsDep,
    ExtractorDep,
    PredictDep,
    PredictPrincipalDep,
    SessionDep,
    SettingsDep,
)
from service.errors import (
    BadGateway,
    PayloadTooLarge,
    ServiceUnavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from service.extractors import service as extractors
from service.heads.deps import HeadCacheDep, UsageMeterDep
from service.predict import service
from service.predict.extractor_errors import extractor_errors
from service.predict.schemas import FeaturesRequest, PredictResponse

router = APIRouter(prefix="/v1/predict", tags=["prediction"])

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"description": "A named head, version or alias does not exist or is not visible."},
    403: {"description": "A named head is suspended."},
    409: {"description": "`extractor_mismatch`: a head expects another extractor or width."},
    410: {
        "description": "`extractor_retired`: a head was trained on a retired extractor; "
        "`replacement` names its newest version on an active one, if any."
    },
    422: {"description": "Malformed reference, image or features."},
}
_DEPRECATION_HEADERS: dict[str, Any] = {
    "Deprecation": {
        "description": "A head was trained on a deprecated extractor (RFC 9745): `@<unix time>` "
        "of the deprecation.",
        "schema": {"type": "string"},
    },
    "Sunset": {
        "description": "When that extractor is to be retired (RFC 8594), if set.",
        "schema": {"type": "string"},
    },
}


async def _features(
    extractor: Any,
    files: list[tuple[str, bytes]],
    request_id: str,
    extractor_id: str,
    planned: list[service.PlannedHead],
    registered: Collection[str],
) -> Any:
    """Call one extractor and map its failures: down -> 503, garbage -> 502, bad image -> 4xx;
    an extractor no replica serves is 409 for a head pinned to an unknown one, 503 for a
    registered one (the operator's processes lack its file)."""
    try:
        with extractor_errors(extractor):
            return await extractor.features(files, request_id=request_id, extractor_id=extractor_id)
    except ExtractorNotServed as exc:
        if extractor_id in registered:
            raise ServiceUnavailable(
                f"Extractor {extractor_id[:12]}... is registered but no extractor process "
                "serves it now; retry shortly.",
                code="extractor_unavailable",
                retry_after=30,
            ) from exc
        head = next(p for p in planned if p.extractor_id == extractor_id)
        raise service.mismatch(head, None) from exc


def _check_batch(batch: Any, n: int) -> None:
    """The client validates the wire format; these are the invariants prediction relies on."""
    floats = np.asarray(batch.floats)
    if floats.ndim != 2 or floats.shape[0] != n or not np.isfinite(floats).all():
        raise BadGateway(
            "The feature extractor returned unusable features.", code="extractor_bad_response"
        )


def check_budget(parts: list[tuple[str, bytes]], settings: Any) -> None:
    """Bytes per image and declared pixels per request, from the headers alone, before the
    extractor is asked to decode anything (docs/threats.md, "Extractor work")."""
    from extractor.admission import over_budget, request_pixels
    from extractor.imaging import ImageRejected

    for name, data in parts:
        if len(data) > settings.max_image_bytes:
            raise PayloadTooLarge(
                f"{name}: the file has {len(data)} bytes, over the limit of "
                f"{settings.max_image_bytes}",
                code="image_bytes_too_large",
            )
    try:
        total = request_pixels(parts, settings.max_image_pixels)
        if total > settings.max_request_pixels:
            raise over_budget(parts, total, settings.max_request_pixels)
    except ImageRejected as exc:
        kind = {413: PayloadTooLarge, 415: UnsupportedMediaType}.get(exc.status, Unprocessable)
        raise kind(f"{exc.filename}: {exc.reason}", code=exc.code) from None


# Below these sizes a step runs on the event loop: a worker-thread hop costs more than the work
# (bench/results/profile.md); larger requests go to a thread so the loop keeps serving others.
INLINE_IMAGES = 4  # header checks of the pixel budget
INLINE_SCORES = 64  # images x heads evaluated inline


@router.post(
    "",
    response_model=PredictResponse,
    responses={**_PROBLEMS, 200: {"description": "Scores", "headers": _DEPRECATION_HEADERS}},
)
async def predict(
    request: Request,
    principal: PredictPrincipalDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    cache: HeadCacheDep,
    meter: UsageMeterDep,
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
) -> Response:
    """Score images with one or more heads, which may be pinned to different extractors: each
    image goes once through each extractor needed. A head on a deprecated extractor answers with
    `Deprecation` and `Sunset` headers; one on a retired extractor is 410."""
    if len(files) > settings.max_files_per_request:
        raise PayloadTooLarge(
            f"At most {settings.max_files_per_request} files per request.", code="too_many_files"
        )
    # Heads, their weights and the registry's verdict from this process's caches when they are
    # there; otherwise one worker-thread call with one short transaction, ended before the
    # extractor is called, so no database lock or connection is held while it works.
    state = request.app.state
    found = service.plan_cached(getattr(state, "lookups", None), cache, principal, heads)
    if found is None:
        found = await run_in_threadpool(
            _plan_and_gate, state.sessionmaker, blobs, cache, principal, heads
        )
    planned, gate = found
    parts = [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
    if len(parts) <= INLINE_IMAGES:
        check_budget(parts, settings)
    else:
        await run_in_threadpool(check_budget, parts, settings)
    request_id = current_request_id() or uuid.uuid4().hex  # the id the response echoes
    ids = service.extractor_ids(planned)
    batches = await asyncio.gather(
        *(_features(extractor, parts, request_id, eid, planned, gate.registered) for eid in ids)
    )
    features: dict[str, tuple[Any, Any]] = {}
    for eid, batch in zip(ids, batches, strict=True):
        service.check_extractor([p for p in planned if p.extractor_id == eid], batch.extractor_id)
        _check_batch(batch, len(parts))
        features[eid] = (batch.floats, batch.bits)
    names = [name for name, _ in parts]
    if len(parts) * len(planned) <= INLINE_SCORES:
        results = service.run_heads_per_extractor(planned, features, names, top_k)
    else:
        results = await run_in_threadpool(
            service.run_heads_per_extractor, planned, features, names, top_k
        )
    service.record_usage(meter, planned, principal, len(parts))
    body = {
        "extractor_id": ids[0],
        "extractors": {p.ref: p.extractor_id for p in planned},
        "results": results,
    }
    # The response model documents the body; encoding the plain dicts directly skips building
    # and validating a model per label (the shape is PredictResponse's, checked by the tests).
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(),
        media_type="application/json",
        headers=gate.headers,
    )


def _plan_and_gate(
    factory: Any, blobs: Any, cache: Any, principal: Any, heads: str
) -> tuple[list[service.PlannedHead], service.Gate]:
    with session_scope(factory) as session:
        return service.plan_and_gate(session, blobs, cache, principal, heads)


@router.post("/features", response_model=PredictResponse, responses=_PROBLEMS)
def predict_features(
    body: FeaturesRequest,
    response: Response,
    session: SessionDep,
    principal: PredictDep,
    blobs: BlobsDep,
    cache: HeadCacheDep,
    meter: UsageMeterDep,
) -> PredictResponse:
    """Run only the heads on features the client computed with its own copy of the extractor."""
    planned = service.plan(session, blobs, cache, principal, body.heads)
    _, deprecated = extractors.gate(session, [(p.head_id, p.ref, p.extractor_id) for p in planned])
    service.check_extractor(planned, body.extractor_id)
    floats, bits = service.parse_feature_input(body.features, planned)
    names = [f"features[{i}]" for i in range(len(body.features))]
    results = service.run_heads(planned, floats, bits, names, body.top_k)
    service.record_usage(meter, planned, principal, len(names))
    response.headers.update(extractors.deprecation_headers(deprecated))
    return PredictResponse(
        extractor_id=body.extractor_id,
        extractors={p.ref: p.extractor_id for p in planned},
        results=results,  # type: ignore[arg-type]  # dicts of ImageResult's shape
    )
