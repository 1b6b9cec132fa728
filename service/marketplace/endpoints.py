"""`GET /v1/marketplace`: public, non-suspended heads of every tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import PrincipalDep, SessionDep
from service.heads.deps import UsageFlushedDep
from service.heads.views import parse_cursor
from service.marketplace import service
from service.marketplace.schemas import MarketplaceList

router = APIRouter(prefix="/v1/marketplace", tags=["marketplace"])


@router.get("", response_model=MarketplaceList)
def marketplace(
    _flushed: UsageFlushedDep,
    session: SessionDep,
    _: PrincipalDep,
    q: Annotated[
        str | None, Query(max_length=200, description="Text in owner, name or description.")
    ] = None,
    label: Annotated[
        str | None, Query(max_length=200, description="Heads that predict this label.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> MarketplaceList:
    """Public heads with their cards, by owner and name; any valid key may browse."""
    return service.search(session, q=q, label=label, after=parse_cursor(cursor), limit=limit)
