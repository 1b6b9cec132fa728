from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.text import SafeName

SLUG = r"^[a-z0-9-]{2,40}$"


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "acme"}]})
    name: str = Field(pattern=SLUG, description="Unique slug, [a-z0-9-]{2,40}")


class TenantOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    created_at: datetime


class TenantList(BaseModel):
    items: list[TenantOut]
    next_cursor: str | None


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"scope": "predict", "name": "ios-app"}]}
    )
    scope: Literal["owner", "predict"]
    name: SafeName = Field(min_length=1, max_length=100)


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    scope: str
    name: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="The full key. Shown only in this response; store it now.")


class KeyList(BaseModel):
    items: list[KeyOut]
    next_cursor: str | None = None
