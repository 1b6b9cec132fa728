"""Datasets, their images (content-addressed rows, bytes in the blob store) and cached features."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, new_id, utcnow


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DatasetImage(Base):
    """One image in one dataset. The same bytes twice in a dataset is one row (a duplicate)."""

    __tablename__ = "dataset_images"

    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    # Denormalised owner, so the per-tenant image cap is one indexed count.
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    label: Mapped[str] = mapped_column(String(64))
    # The client's file name, for display only: it never reaches a storage path.
    filename: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Feature(Base):
    """Extractor output for one image, computed once per (image, extractor) and reused by training.

    `floats` is float32 little-endian (dim,), `bits` the packed signs (ceil(dim/8),) as in
    `extractor.packing.pack_signs`.
    """

    __tablename__ = "features"

    image_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    extractor_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    floats: Mapped[bytes] = mapped_column(LargeBinary)
    bits: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TenantFeature(Base):
    """This tenant's featurizing covered the image for this extractor (its features are in
    `Feature`, shared by content). `features_ready` counts these, so a fresh upload never shows
    the features another tenant's identical bytes left in the cache (docs/threats.md)."""

    __tablename__ = "tenant_features"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    image_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    extractor_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
