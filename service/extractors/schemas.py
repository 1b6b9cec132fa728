"""Extractor registry request and response bodies (api.md, "Extractors")."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.text import SafeText

EXTRACTOR_ID_PATTERN = r"^[0-9a-f]{64}$"
ExtractorStatusName = Literal["active", "deprecated", "retired"]

EXAMPLE_ID = "9f2c0d1e" + "0" * 56
EXTRACTOR_EXAMPLE: dict[str, Any] = {
    "id": EXAMPLE_ID,
    "architecture": "birealnet_112",
    "input_size": [3, 112, 112],
    "feature_dim": 512,
    "parameters": 6_451_136,
    "size_bytes": 1_544_280,
    "bits_per_weight": 1.915,
    "status": "active",
    "default": True,
    "sunset": None,
    "deprecated_at": None,
    "note": "distilled from EfficientNet-Lite0, round 2",
    "created_at": "2026-05-01T12:00:00Z",
    "pinned_versions": 41,
    "pinned_aliases": 17,
}


class BulkMoveOut(BaseModel):
    """Progress of an admin's bulk move: one move job per head."""

    id: str
    to: str = Field(description="The extractor the heads move to.")
    promote_if_not_worse: bool
    total: int = Field(description="Move jobs enqueued (one per head).")
    moved: int = Field(description="Jobs that registered the new version.")
    failed: int = Field(description="Jobs that failed or were cancelled (e.g. dataset gone).")
    left: int = Field(description="Jobs queued or running.")
    failures: list[dict[str, str]] = Field(
        default_factory=list, description="Up to 20 failed heads: `head`, `error`."
    )
    created_at: datetime


class ExtractorOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [EXTRACTOR_EXAMPLE]})

    id: str = Field(description="SHA-256 of the checkpoint file.")
    architecture: str
    input_size: list[int]
    feature_dim: int
    parameters: int
    size_bytes: int
    bits_per_weight: float
    status: ExtractorStatusName
    default: bool = Field(description="Used by new jobs and uploads.")
    sunset: datetime | None = Field(description="When a deprecated extractor stops answering.")
    deprecated_at: datetime | None
    note: str
    created_at: datetime
    pinned_versions: int = Field(description="Head versions trained on this extractor.")
    pinned_aliases: int = Field(description="Aliases pointing at such versions.")
    preprocessing: dict[str, Any] = Field(
        default_factory=dict, description="Input size, mean, std, interpolation, crop."
    )


class ExtractorDetail(ExtractorOut):
    bulk_move: BulkMoveOut | None = Field(
        default=None, description="The latest bulk move of heads off this extractor."
    )


class ExtractorList(BaseModel):
    items: list[ExtractorOut]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null at the end."
    )


class ExtractorCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"id": EXAMPLE_ID, "note": "round 2 distillation"}]},
    )
    id: str = Field(pattern=EXTRACTOR_ID_PATTERN, description="SHA-256 of the checkpoint file.")
    note: SafeText = Field(default="", max_length=2000)


class ExtractorUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"default": True},
                {"status": "deprecated", "sunset": "2026-12-31T00:00:00Z"},
                {"status": "retired"},
            ]
        },
    )
    default: Literal[True] | None = Field(
        default=None, description="Make this the default (the previous one stops being it)."
    )
    status: ExtractorStatusName | None = None
    sunset: datetime | None = Field(
        default=None, description="With `deprecated`: the date it is to be retired (RFC 3339)."
    )
    note: SafeText | None = Field(default=None, max_length=2000)


class BulkMoveCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"to": EXAMPLE_ID, "promote_if_not_worse": True}]},
    )
    to: str = Field(pattern=EXTRACTOR_ID_PATTERN, description="The extractor to move heads to.")
    promote_if_not_worse: bool = False


class HeadMoveCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"extractor_id": EXAMPLE_ID, "from_version": None, "promote_if_not_worse": True}
            ]
        },
    )
    extractor_id: str = Field(pattern=EXTRACTOR_ID_PATTERN)
    from_version: int | None = Field(
        default=None, ge=1, description="Default: the `production` version, else the newest."
    )
    promote_if_not_worse: bool = Field(
        default=False,
        description="Point `production` at the new version when its top-1 on the same "
        "validation split is not lower.",
    )
