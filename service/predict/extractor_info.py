"""`GET /v1/extractor`: which extractor this service runs, for apps that featurize on device.

A client that computes features itself needs the extractor's id (for `POST /v1/predict/features`),
its input size and feature width; the extractor process serves the same document at `/v1/info`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from service.deps import ExtractorDep, PredictDep
from service.predict.extractor_errors import extractor_errors

router = APIRouter(tags=["prediction"])

EXAMPLE: dict[str, Any] = {
    "id": "9f2c0d1e" + "0" * 56,
    "architecture": "birealnet_112",
    "input_size": [3, 112, 112],
    "feature_dim": 512,
    "parameters": 6_451_136,
    "size_bytes": 1_544_280,
    "bits_per_weight": 1.915,
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
    with extractor_errors(extractor):
        info = await extractor.info()
    return ExtractorInfo.model_validate(info)
