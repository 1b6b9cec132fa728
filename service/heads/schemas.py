"""Head registry request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.text import SafeText

Visibility = Literal["private", "public"]

VERSION_EXAMPLE: dict[str, Any] = {
    "ref": "acme/flowers:3",
    "version": 3,
    "head_type": "float",
    "labels": ["daisy", "rose", "tulip"],
    "extractor_id": "9f2c0d1e" + "0" * 56,
    "feature_dim": 512,
    "metrics": {"val_top1": 0.91, "val_top5": 1.0, "train_loss": 0.21},
    "dataset_id": "5b0c3f5e2b9a4c7e8d1f6a2b3c4d5e6f",
    "job_id": "0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a",
    "size_bytes": 6512,
    "sha256": "3e1f" + "0" * 60,
    "aliases": ["production"],
    "created_at": "2025-05-01T12:00:00Z",
}


class HeadVersionOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [VERSION_EXAMPLE]})

    ref: str = Field(description="Fully resolved reference, `<owner>/<name>:<version>`.")
    version: int
    head_type: Literal["float", "binary", "mlp"]
    labels: list[str]
    extractor_id: str = Field(description="The extractor whose features this head expects.")
    feature_dim: int
    metrics: dict[str, Any]
    dataset_id: str | None
    job_id: str | None
    size_bytes: int
    sha256: str
    aliases: list[str] = Field(description="Aliases pointing at this version.")
    created_at: datetime


class HeadOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "owner": "acme",
                    "name": "flowers",
                    "visibility": "public",
                    "description": "Five garden flowers.",
                    "suspended": False,
                    "aliases": {"production": 3},
                    "versions": [VERSION_EXAMPLE],
                    "usage_count": 1200,
                    "created_at": "2025-05-01T11:00:00Z",
                    "updated_at": "2025-05-01T12:00:00Z",
                }
            ]
        }
    )

    owner: str
    name: str
    visibility: Visibility
    description: str
    suspended: bool
    aliases: dict[str, int]
    versions: list[HeadVersionOut]
    usage_count: int = Field(description="Images scored with this head, all tenants together.")
    created_at: datetime
    updated_at: datetime


class HeadSummary(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "owner": "acme",
                    "name": "flowers",
                    "visibility": "private",
                    "description": "",
                    "suspended": False,
                    "aliases": {"production": 2},
                    "latest_version": 3,
                    "version_count": 3,
                    "usage_count": 0,
                    "created_at": "2025-05-01T11:00:00Z",
                    "updated_at": "2025-05-01T12:00:00Z",
                }
            ]
        }
    )

    owner: str
    name: str
    visibility: Visibility
    description: str
    suspended: bool
    aliases: dict[str, int]
    latest_version: int | None
    version_count: int
    usage_count: int
    created_at: datetime
    updated_at: datetime


class HeadList(BaseModel):
    items: list[HeadSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end.")


class AliasUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 2}]})
    version: int = Field(ge=1)


class AliasOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"alias": "production", "version": 2, "ref": "acme/flowers:2"}]
        }
    )
    alias: str
    version: int
    ref: str


class HeadUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"visibility": "public", "description": "Garden flowers."}]
        },
    )
    visibility: Visibility | None = None
    description: SafeText | None = Field(default=None, max_length=4000)


class AdminHeadUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"suspended": True}]})
    suspended: bool
