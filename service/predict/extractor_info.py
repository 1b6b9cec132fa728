"""`GET /v1/extractor`: which extractor this service runs, for apps that featurize on device.

A client that computes features itself needs the extractor's id (for `POST /v1/predict/features`),
its input size and feature width; the extractor process serves the same document at `/v1/info`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from service.deps import ExtractorDep, PredictDep
from service.errors import BadGateway, ServiceUnavailable

router = APIRouter(tags=["prediction"])

EXAMPLE: dict[str, Any] = {
    "id": "9f2c0d1e" + "0" * 56,
    "architecture": "birealnet18",
    "input_size": [3, 224, 224],
    "feature_dim": 512,
    "parameters": 11_690_000,
    "size_bytes": 1_640_000,
    "bits_per_weight": 1.12,
}


class ExtractorInfo(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [EXAMPLE]})

    id: str
    architecture: str
    input_size: list[int]
    feature_dim: int
    parameters: int
    size_bytes: int
    bits_per_weight: float


@router.get("/v1/extractor", response_model=ExtractorInfo)
async def extractor_info(_: PredictDep, extractor: ExtractorDep) -> ExtractorInfo:
    """The extractor's id, architecture, input size, feature width and size on disk."""
    from extractor.client import ExtractorBadResponse, ExtractorUnavailable

    if extractor is None:
        raise ServiceUnavailable(
            "No extractor is configured.", code="extractor_unavailable", retry_after=30
        )
    try:
        info = await extractor.info()
    except ExtractorUnavailable as exc:
        retry = int(getattr(exc, "retry_after", None) or 5)
        raise ServiceUnavailable(
            "The feature extractor is not answering; retry shortly.",
            code="extractor_unavailable",
            retry_after=retry,
        ) from exc
    except ExtractorBadResponse as exc:
        raise BadGateway(
            f"The feature extractor sent an invalid answer: {exc}", code="extractor_bad_response"
        ) from exc
    return ExtractorInfo.model_validate(info)
