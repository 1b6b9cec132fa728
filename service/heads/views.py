"""Response bodies built from rows, shared by the registry, admin and marketplace routes."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.auth import Principal
from service.errors import BadRequest
from service.heads import repository as repo
from service.heads.schemas import HeadList, HeadOut, HeadSummary, HeadVersionOut
from service.heads.tables import Head, HeadVersion

# What another tenant's training says about its data: the per-class support and the confusion
# matrix count its images per label; dataset and job ids name its private objects.
PRIVATE_METRICS = ("confusion_matrix",)


def public_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A version's metrics as a tenant other than its owner sees them: per-class precision and
    recall, no image counts per class (docs/threats.md)."""
    out = {k: v for k, v in metrics.items() if k not in PRIVATE_METRICS}
    per_class = out.get("per_class")
    if isinstance(per_class, dict):
        out["per_class"] = {
            label: {k: v for k, v in row.items() if k != "support"}
            if isinstance(row, dict)
            else row
            for label, row in per_class.items()
        }
    return out


def sees_everything(principal: Principal, head: Head) -> bool:
    """The owner and the operator see a version whole; other tenants see it redacted."""
    return principal.is_admin or principal.tenant_id == head.tenant_id


def version_out(
    owner: str, head: Head, v: HeadVersion, aliases: dict[str, int], *, full: bool = True
) -> HeadVersionOut:
    metrics = v.metrics or {}
    return HeadVersionOut(
        ref=f"{owner}/{head.name}:{v.version}",
        version=v.version,
        head_type=v.head_type,  # type: ignore[arg-type]
        labels=v.labels,
        extractor_id=v.extractor_id,
        feature_dim=v.feature_dim,
        metrics=metrics if full else public_metrics(metrics),
        dataset_id=v.dataset_id if full else None,
        job_id=v.job_id if full else None,
        size_bytes=v.size_bytes,
        sha256=v.sha256,
        aliases=sorted(a for a, n in aliases.items() if n == v.version),
        created_at=v.created_at,
    )


def head_out(session: Session, owner: str, head: Head, *, full: bool = True) -> HeadOut:
    aliases = repo.get_aliases(session, head.id)
    versions = repo.list_versions(session, head.id)
    usage = repo.usage_counts(session, [head.id]).get(head.id, 0)
    return HeadOut(
        owner=owner,
        name=head.name,
        visibility=head.visibility,  # type: ignore[arg-type]
        description=head.description,
        suspended=head.suspended,
        aliases=aliases,
        versions=[version_out(owner, head, v, aliases, full=full) for v in versions],
        usage_count=usage,
        created_at=head.created_at,
        updated_at=head.updated_at,
    )


def head_list(session: Session, rows: list[repo.HeadRow], limit: int) -> HeadList:
    """``rows`` holds up to limit + 1 rows; the extra one only says another page exists."""
    more = len(rows) > limit
    rows = rows[:limit]
    ids = [h.id for h, _ in rows]
    versions = repo.versions_of(session, ids)
    aliases = repo.aliases_of(session, ids)
    usage = repo.usage_counts(session, ids)
    items = [
        HeadSummary(
            owner=owner,
            name=h.name,
            visibility=h.visibility,  # type: ignore[arg-type]
            description=h.description,
            suspended=h.suspended,
            aliases=aliases[h.id],
            latest_version=versions[h.id][-1].version if versions[h.id] else None,
            version_count=len(versions[h.id]),
            usage_count=usage.get(h.id, 0),
            created_at=h.created_at,
            updated_at=h.updated_at,
        )
        for h, owner in rows
    ]
    cursor = f"{rows[-1][1]}/{rows[-1][0].name}" if more and rows else None
    return HeadList(items=items, next_cursor=cursor)


def parse_cursor(cursor: str | None) -> tuple[str, str] | None:
    """Cursors are the last ``owner/name`` of the previous page (names cannot hold a slash)."""
    if not cursor:
        return None
    owner, sep, name = cursor.partition("/")
    if not sep or not owner or not name:
        raise BadRequest("cursor must be a value returned as next_cursor.", code="invalid_cursor")
    return owner, name
