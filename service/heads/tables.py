"""Head registry tables: heads, their immutable numbered versions, aliases and usage metering."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, new_id, utcnow


class Head(Base):
    __tablename__ = "heads"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    visibility: Mapped[str] = mapped_column(String(16), default="private")  # private | public
    description: Mapped[str] = mapped_column(Text, default="")
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    # Last version number handed out; bumped with one UPDATE so numbers are never reused, even
    # after the newest version is deleted, and concurrent registrations serialize on the row.
    version_counter: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class HeadVersion(Base):
    __tablename__ = "head_versions"
    __table_args__ = (UniqueConstraint("head_id", "version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    head_id: Mapped[str] = mapped_column(ForeignKey("heads.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    head_type: Mapped[str] = mapped_column(String(16))  # float | binary | mlp
    labels: Mapped[list[str]] = mapped_column(JSON)
    extractor_id: Mapped[str] = mapped_column(String(128))
    feature_dim: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Provenance only: no foreign key, so deleting a dataset or job keeps the version intact.
    dataset_id: Mapped[str | None] = mapped_column(String(32), default=None)
    job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    blob_key: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class HeadAlias(Base):
    __tablename__ = "head_aliases"
    # The composite key makes the database refuse to delete a version an alias points at.
    __table_args__ = (
        ForeignKeyConstraint(
            ["head_id", "version"],
            ["head_versions.head_id", "head_versions.version"],
            name="fk_head_aliases_version_head_versions",
        ),
    )

    head_id: Mapped[str] = mapped_column(
        ForeignKey("heads.id", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class HeadUsage(Base):
    """Predictions (images scored) per head and consuming tenant: the marketplace's meter."""

    __tablename__ = "head_usage"

    head_id: Mapped[str] = mapped_column(
        ForeignKey("heads.id", ondelete="CASCADE"), primary_key=True
    )
    consumer_tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_used_at: Mapped[datetime] = mapped_column(default=utcnow)
