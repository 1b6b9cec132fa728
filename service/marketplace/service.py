"""Cards for public heads; reads only, through the head repository."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.heads import repository as repo
from service.heads.refs import DEFAULT_ALIAS
from service.heads.tables import HeadVersion
from service.marketplace.schemas import MarketplaceCard, MarketplaceList

# Scalar metrics worth showing on a card; the full history stays on the version.
HEADLINE_METRICS = ("val_top1", "val_top5", "train_loss", "n_train", "n_val", "feature_dim")


def _best(versions: list[HeadVersion]) -> HeadVersion | None:
    scored = [v for v in versions if isinstance((v.metrics or {}).get("val_top1"), int | float)]
    if not scored:
        return None
    return max(scored, key=lambda v: (float(v.metrics["val_top1"]), v.version))


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in HEADLINE_METRICS if k in metrics}


def search(
    session: Session,
    *,
    q: str | None,
    label: str | None,
    after: tuple[str, str] | None,
    limit: int,
) -> MarketplaceList:
    rows = repo.list_heads(
        session,
        visibility="public",
        include_suspended=False,
        q=q,
        label=label,
        after=after,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    ids = [h.id for h, _ in rows]
    versions = repo.versions_of(session, ids)
    aliases = repo.aliases_of(session, ids)
    usage = repo.usage_counts(session, ids)
    cards = []
    for head, owner in rows:
        vs = versions[head.id]
        by_number = {v.version: v for v in vs}
        default = by_number.get(aliases[head.id].get(DEFAULT_ALIAS, -1)) or (vs[-1] if vs else None)
        best = _best(vs)
        cards.append(
            MarketplaceCard(
                owner=owner,
                name=head.name,
                ref=f"{owner}/{head.name}",
                description=head.description,
                head_type=default.head_type if default else None,
                labels=list(default.labels) if default else [],
                extractor_id=default.extractor_id if default else None,
                default_version=default.version if default else None,
                best_version=best.version if best else None,
                best_metrics=_headline(best.metrics) if best else {},
                versions=[v.version for v in vs],
                aliases=aliases[head.id],
                usage_count=usage.get(head.id, 0),
                updated_at=head.updated_at,
            )
        )
    cursor = f"{rows[-1][1]}/{rows[-1][0].name}" if more and rows else None
    return MarketplaceList(items=cards, next_cursor=cursor)
