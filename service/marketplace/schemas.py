"""Marketplace cards: what another tenant needs to choose a public head."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

CARD_EXAMPLE: dict[str, Any] = {
    "owner": "acme",
    "name": "flowers",
    "ref": "acme/flowers",
    "description": "Five garden flowers, trained on 2,000 photos.",
    "head_type": "float",
    "labels": ["daisy", "dandelion", "rose", "sunflower", "tulip"],
    "extractor_id": "9f2c0d1e" + "0" * 56,
    "default_version": 3,
    "best_version": 2,
    "best_metrics": {"val_top1": 0.91, "val_top5": 1.0},
    "versions": [1, 2, 3],
    "aliases": {"production": 3},
    "usage_count": 1200,
    "updated_at": "2025-05-01T12:00:00Z",
}


class MarketplaceCard(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [CARD_EXAMPLE]})

    owner: str
    name: str
    ref: str = Field(description="Use this in `POST /v1/predict?heads=`.")
    description: str
    head_type: str | None = Field(description="Of the default version (production, else newest).")
    labels: list[str] = Field(description="Labels of the default version.")
    extractor_id: str | None
    default_version: int | None
    best_version: int | None = Field(description="The version with the highest val_top1.")
    best_metrics: dict[str, Any] = Field(description="Headline metrics of best_version.")
    versions: list[int]
    aliases: dict[str, int]
    usage_count: int = Field(description="Images scored with this head, all tenants together.")
    updated_at: datetime


class MarketplaceList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [CARD_EXAMPLE], "next_cursor": None}]}
    )
    items: list[MarketplaceCard]
    next_cursor: str | None
