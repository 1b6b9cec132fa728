from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.db import as_utc
from service.text import SafeText

DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class DatasetCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "flowers", "description": "Five kinds of garden flowers"}]
        },
    )
    name: str = Field(pattern=DATASET_NAME, description="Unique per tenant; letters, digits, _.-")
    description: SafeText = Field(default="", max_length=2000)


class DatasetOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f1c0d5e9a8b4c7d9e0f1a2b3c4d5e6f",
                    "name": "flowers",
                    "description": "Five kinds of garden flowers",
                    "created_at": "2026-01-01T12:00:00Z",
                    "updated_at": "2026-01-01T12:05:00Z",
                    "image_count": 220,
                    "label_counts": {"daisy": 120, "tulip": 100},
                    "extractor_id": "9b2e...",
                    "features_ready": 180,
                }
            ]
        }
    )
    id: str
    name: str
    description: str
    created_at: datetime
    updated_at: datetime
    image_count: int
    label_counts: dict[str, int]
    extractor_id: str | None = Field(
        description="The extractor features_ready counts for; null while it cannot be reached."
    )
    features_ready: int | None = Field(
        description="Images whose features for the current extractor are cached."
    )


class DatasetList(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None


class RejectedFile(BaseModel):
    filename: str
    reason: str
    code: str = Field(description="Machine-readable reason, e.g. invalid_image, image_too_large")


class UploadResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "added": 2,
                    "duplicates": 1,
                    "rejected": [
                        {
                            "filename": "notes.pdf",
                            "reason": "PDF is not an accepted image format",
                            "code": "unsupported_image_format",
                        }
                    ],
                }
            ]
        }
    )
    added: int
    duplicates: int
    rejected: list[RejectedFile]


class ImageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    sha256: str
    label: str
    filename: str = Field(description="The name the client sent; for display only")
    size_bytes: int
    width: int
    height: int
    created_at: datetime

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return as_utc(v)  # SQLite hands back naive datetimes


class ImageList(BaseModel):
    items: list[ImageOut]
    next_cursor: str | None
