"""The extractor registry (`extractors`) and the bulk moves of heads off one (`extractor_moves`)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, new_id, utcnow


class ExtractorStatus(enum.StrEnum):
    """active -> deprecated (still answers, with Deprecation/Sunset headers) -> retired (410)."""

    active = "active"
    deprecated = "deprecated"
    retired = "retired"


class Extractor(Base):
    """One registered checkpoint; its id is the SHA-256 of the file, as the extractor serves it."""

    __tablename__ = "extractors"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'deprecated', 'retired')", name="status"),
        # At most one default: a partial unique index (PostgreSQL and SQLite both have them).
        Index(
            "uq_extractors_default",
            "is_default",
            unique=True,
            postgresql_where=text("is_default"),
            sqlite_where=text("is_default"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    architecture: Mapped[str] = mapped_column(String(64))
    input_size: Mapped[list[int]] = mapped_column(JSON)
    feature_dim: Mapped[int] = mapped_column(Integer)
    parameters: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    bits_per_weight: Mapped[float] = mapped_column(Float)
    preprocessing: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=ExtractorStatus.active.value)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str] = mapped_column(Text, default="")
    sunset: Mapped[datetime | None] = mapped_column(default=None)
    deprecated_at: Mapped[datetime | None] = mapped_column(default=None)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)
    # The verified copy of the checkpoint file in the blob store (downloads); None until taken.
    blob_key: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ExtractorMove(Base):
    """An admin's bulk move: one move job per head on `from_extractor_id` (jobs.bulk_move_id)."""

    __tablename__ = "extractor_moves"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    from_extractor_id: Mapped[str] = mapped_column(
        ForeignKey("extractors.id", ondelete="CASCADE"), index=True
    )
    to_extractor_id: Mapped[str] = mapped_column(ForeignKey("extractors.id", ondelete="CASCADE"))
    promote_if_not_worse: Mapped[bool] = mapped_column(Boolean, default=False)
    total: Mapped[int] = mapped_column(Integer, default=0)  # jobs enqueued
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
