"""All SQL about datasets, images and cached features."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.datasets.tables import Dataset, DatasetImage, Feature, TenantFeature


def get_dataset(session: Session, dataset_id: str, tenant_id: str | None) -> Dataset | None:
    """`tenant_id=None` means the platform admin, who sees every tenant's datasets."""
    q = select(Dataset).where(Dataset.id == dataset_id)
    if tenant_id is not None:
        q = q.where(Dataset.tenant_id == tenant_id)
    return session.scalar(q)


def get_dataset_by_name(session: Session, tenant_id: str, name: str) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.name == name)
    )


def list_datasets(
    session: Session, tenant_id: str | None, *, after: tuple[datetime, str] | None, limit: int
) -> list[Dataset]:
    """Oldest first, keyset-paginated on (created_at, id) so pages never skip or repeat."""
    q = select(Dataset).order_by(Dataset.created_at, Dataset.id)
    if tenant_id is not None:
        q = q.where(Dataset.tenant_id == tenant_id)
    if after is not None:
        at, last_id = after
        q = q.where(
            or_(Dataset.created_at > at, and_(Dataset.created_at == at, Dataset.id > last_id))
        )
    return list(session.scalars(q.limit(limit)))


def label_counts(session: Session, dataset_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {d: {} for d in dataset_ids}
    if not dataset_ids:
        return out
    rows = session.execute(
        select(DatasetImage.dataset_id, DatasetImage.label, func.count())
        .where(DatasetImage.dataset_id.in_(dataset_ids))
        .group_by(DatasetImage.dataset_id, DatasetImage.label)
        .order_by(DatasetImage.label)
    )
    for dataset_id, label, n in rows:
        out[dataset_id][label] = n
    return out


def features_ready(
    session: Session, dataset_ids: Sequence[str], extractor_id: str
) -> dict[str, int]:
    out = dict.fromkeys(dataset_ids, 0)
    if not dataset_ids:
        return out
    rows = session.execute(
        select(DatasetImage.dataset_id, func.count())
        .join(TenantFeature, _claimed(extractor_id))
        .where(DatasetImage.dataset_id.in_(dataset_ids))
        .group_by(DatasetImage.dataset_id)
    )
    for dataset_id, n in rows:
        out[dataset_id] = n
    return out


def tenant_image_count(session: Session, tenant_id: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(DatasetImage)
            .where(DatasetImage.tenant_id == tenant_id)
        )
        or 0
    )


def tenant_usage(session: Session, tenant_id: str) -> tuple[int, int]:
    """(images, bytes) the tenant stores, all datasets together."""
    row = session.execute(
        select(func.count(), func.coalesce(func.sum(DatasetImage.size_bytes), 0)).where(
            DatasetImage.tenant_id == tenant_id
        )
    ).one()
    return int(row[0]), int(row[1])


def count_datasets(session: Session, tenant_id: str) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Dataset).where(Dataset.tenant_id == tenant_id)
        )
        or 0
    )


def dataset_labels(session: Session, dataset_id: str) -> set[str]:
    return set(
        session.scalars(
            select(DatasetImage.label).where(DatasetImage.dataset_id == dataset_id).distinct()
        )
    )


def existing_shas(session: Session, dataset_id: str, shas: Sequence[str]) -> set[str]:
    """Of `shas`, those the dataset already holds."""
    found: set[str] = set()
    unique = list(dict.fromkeys(shas))
    for start in range(0, len(unique), 500):  # well under every backend's parameter limit
        found.update(
            session.scalars(
                select(DatasetImage.sha256).where(
                    DatasetImage.dataset_id == dataset_id,
                    DatasetImage.sha256.in_(unique[start : start + 500]),
                )
            )
        )
    return found


def get_image(session: Session, dataset_id: str, sha256: str) -> DatasetImage | None:
    return session.get(DatasetImage, (dataset_id, sha256))


def list_images(
    session: Session, dataset_id: str, *, label: str | None, after: str | None, limit: int
) -> list[DatasetImage]:
    """By SHA-256, so a cursor (the last hash) pages stably while images are added."""
    q = select(DatasetImage).where(DatasetImage.dataset_id == dataset_id)
    if label is not None:
        q = q.where(DatasetImage.label == label)
    if after is not None:
        q = q.where(DatasetImage.sha256 > after)
    return list(session.scalars(q.order_by(DatasetImage.sha256).limit(limit)))


def dataset_shas(session: Session, dataset_id: str) -> list[str]:
    return list(
        session.scalars(select(DatasetImage.sha256).where(DatasetImage.dataset_id == dataset_id))
    )


def unreferenced(session: Session, shas: Sequence[str]) -> list[str]:
    """Of `shas`, those no dataset of any tenant still holds."""
    if not shas:
        return []
    used = set(
        session.scalars(select(DatasetImage.sha256).where(DatasetImage.sha256.in_(shas)).distinct())
    )
    return [s for s in shas if s not in used]


def delete_features(session: Session, shas: Sequence[str]) -> None:
    if shas:
        session.execute(delete(Feature).where(Feature.image_sha256.in_(shas)))


def _claimed(extractor_id: str):  # type: ignore[no-untyped-def]
    """Join condition: the image's tenant has featurized it for this extractor."""
    return and_(
        TenantFeature.tenant_id == DatasetImage.tenant_id,
        TenantFeature.image_sha256 == DatasetImage.sha256,
        TenantFeature.extractor_id == extractor_id,
    )


def missing_feature_shas(session: Session, dataset_id: str, extractor_id: str) -> list[str]:
    """Images of the dataset its tenant has not featurized for this extractor, in a stable
    order. Features another tenant left in the shared cache do not count: they are computed
    again, so neither `features_ready` nor the time it takes tells who else holds the bytes."""
    q = (
        select(DatasetImage.sha256)
        .outerjoin(TenantFeature, _claimed(extractor_id))
        .where(DatasetImage.dataset_id == dataset_id, TenantFeature.image_sha256.is_(None))
        .order_by(DatasetImage.sha256)
    )
    return list(session.scalars(q))


def dataset_tenant(session: Session, dataset_id: str) -> str | None:
    return session.scalar(select(Dataset.tenant_id).where(Dataset.id == dataset_id))


def insert_claims(session: Session, tenant_id: str, extractor_id: str, shas: list[str]) -> None:
    """Record that the tenant's featurizing covered these images (ignoring ones recorded)."""
    if not shas:
        return
    rows = [{"tenant_id": tenant_id, "image_sha256": s, "extractor_id": extractor_id} for s in shas]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(TenantFeature).on_conflict_do_nothing(), rows)


def delete_stale_claims(session: Session, shas: Sequence[str]) -> None:
    """Claims on these images by tenants whose datasets no longer hold them."""
    if not shas:
        return
    held = (
        select(DatasetImage.sha256)
        .where(
            DatasetImage.tenant_id == TenantFeature.tenant_id,
            DatasetImage.sha256 == TenantFeature.image_sha256,
        )
        .exists()
    )
    session.execute(delete(TenantFeature).where(TenantFeature.image_sha256.in_(list(shas)), ~held))


def insert_features(session: Session, rows: list[dict[str, object]]) -> None:
    """Insert, ignoring rows another worker stored first: computing twice is harmless."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(postgresql.insert(Feature).on_conflict_do_nothing(), rows)
    elif dialect == "sqlite":
        session.execute(sqlite.insert(Feature).on_conflict_do_nothing(), rows)
    else:  # pragma: no cover - only the two supported backends
        raise NotImplementedError(dialect)


def dataset_features(
    session: Session, dataset_id: str, extractor_id: str
) -> list[tuple[str, str, int, bytes, bytes]]:
    """(sha256, label, dim, floats, bits) for every image of the dataset with features."""
    rows = session.execute(
        select(DatasetImage.sha256, DatasetImage.label, Feature.dim, Feature.floats, Feature.bits)
        .join(
            Feature,
            and_(Feature.image_sha256 == DatasetImage.sha256, Feature.extractor_id == extractor_id),
        )
        .where(DatasetImage.dataset_id == dataset_id)
        .order_by(DatasetImage.sha256)
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


def touch_dataset(session: Session, dataset_id: str, at: datetime) -> None:
    from sqlalchemy import update

    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(updated_at=at))
