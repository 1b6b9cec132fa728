"""`GET /v1/extractor`: the default extractor, for apps that featurize on device.

A client that computes features itself needs the extractor's id (for `POST /v1/predict/features`),
its input size and feature width. The default is the registry's (`GET /v1/extractors` lists
them all); before the registry has one, the extractor processes' own `/v1/info` answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from service.deps import ExtractorDep, PredictDep, SessionDep
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
async def extractor_info(
    session: SessionDep, _: PredictDep, extractor: ExtractorDep
) -> ExtractorInfo:
    """The default extractor's id, architecture, input size, feature width and size on disk
    (what new jobs train on)."""
    from starlette.concurrency import run_in_threadpool

    from service.extractors import repository, service
    from service.extractors.endpoints import registry_default

    found = await registry_default(session, extractor)
    if found is not None:
        out = await run_in_threadpool(
            lambda: service.to_out(found, repository.pinned_counts(session))
        )
        return ExtractorInfo.model_validate(out.model_dump(mode="json"))
    with extractor_errors(extractor):
        info = await extractor.info()
    return ExtractorInfo.model_validate(public_info(info))


# What a client may learn from the extractor process's /v1/info; the rest (the inference path,
# CPU features, the training command line of the provenance) is for operators only.
PUBLIC_FIELDS = (*EXAMPLE, "preprocessing")


def public_info(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in PUBLIC_FIELDS if k in info}
