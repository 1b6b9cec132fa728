"""`GET /v1/marketplace`: public, non-suspended heads of all tenants, search, cards, usage."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ADMIN_HEADERS, create_tenant
from tests.heads.helpers import add_version

EXTRACTOR = "e" * 64


@pytest.fixture(scope="module")
def market(client, app) -> dict[str, Any]:
    a, b, c = (create_tenant(client, p) for p in ("mka", "mkb", "mkc"))
    add_version(app, a.id, "flowers", labels=["daisy", "rose"], metrics={"val_top1": 0.7})
    add_version(app, a.id, "flowers", labels=["daisy", "rose", "tulip"], metrics={"val_top1": 0.9})
    add_version(app, a.id, "flowers", labels=["daisy", "rose", "tulip"], metrics={"val_top1": 0.8})
    add_version(app, a.id, "hidden", labels=["daisy"])
    add_version(app, b.id, "cars", labels=["sedan", "truck"], metrics={})
    add_version(app, b.id, "banned", labels=["x", "y"])
    for owner, name in ((a, "flowers"), (b, "cars"), (b, "banned")):
        r = client.patch(
            f"/v1/heads/{owner.name}/{name}",
            json={"visibility": "public", "description": f"The {name} of {owner.name}"},
            headers=owner.owner_headers,
        )
        assert r.status_code == 200
    r = client.put(
        f"/v1/heads/{a.name}/flowers/aliases/production",
        json={"version": 1},
        headers=a.owner_headers,
    )
    assert r.status_code == 200
    r = client.patch(
        f"/v1/admin/heads/{b.name}/banned", json={"suspended": True}, headers=ADMIN_HEADERS
    )
    assert r.status_code == 200
    return {"a": a, "b": b, "c": c}


def names(body: dict[str, Any], *owners: Any) -> list[str]:
    wanted = {o.name for o in owners}
    return [f"{x['owner']}/{x['name']}" for x in body["items"] if x["owner"] in wanted]


def test_lists_public_unsuspended_heads_of_all_tenants(client, market) -> None:
    a, b, c = market["a"], market["b"], market["c"]
    body = client.get("/v1/marketplace", headers=c.predict_headers).json()
    assert names(body, a, b) == [f"{a.name}/flowers", f"{b.name}/cars"]


def test_card_shows_default_labels_best_metrics_versions(client, market) -> None:
    a, c = market["a"], market["c"]
    body = client.get("/v1/marketplace", params={"q": a.name}, headers=c.owner_headers).json()
    (card,) = body["items"]
    assert card["ref"] == f"{a.name}/flowers" and card["description"] == f"The flowers of {a.name}"
    assert card["default_version"] == 1 and card["labels"] == ["daisy", "rose"]  # production
    assert card["best_version"] == 2 and card["best_metrics"] == {"val_top1": 0.9}
    assert card["versions"] == [1, 2, 3] and card["aliases"] == {"production": 1}
    assert card["extractor_id"] == EXTRACTOR and card["head_type"] == "float"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"label": "tulip"}, ["flowers"]),
        ({"label": "truck"}, ["cars"]),
        ({"label": "tul"}, []),  # whole labels only
        ({"label": "x"}, []),  # suspended heads never appear
        ({"q": "CARS"}, ["cars"]),  # case-insensitive text search
        ({"q": "flowers of"}, ["flowers"]),
        ({"q": "100%_"}, []),  # LIKE wildcards are literal
    ],
)
def test_search_by_text_and_label(client, market, params, expected) -> None:
    a, b, c = market["a"], market["b"], market["c"]
    body = client.get("/v1/marketplace", params=params, headers=c.owner_headers).json()
    assert [n.split("/")[1] for n in names(body, a, b)] == expected


def test_usage_count_grows_with_other_tenants_predictions(client, market) -> None:
    a, c = market["a"], market["c"]

    def usage() -> int:
        body = client.get("/v1/marketplace", params={"q": a.name}, headers=c.owner_headers).json()
        return int(body["items"][0]["usage_count"])

    before = usage()
    body = {"extractor_id": EXTRACTOR, "heads": [f"{a.name}/flowers"], "features": [[0.0] * 20] * 2}
    assert (
        client.post("/v1/predict/features", json=body, headers=c.predict_headers).status_code == 200
    )
    assert usage() == before + 2


def test_marketplace_pages_and_needs_a_key(client, market) -> None:
    c = market["c"]
    first = client.get("/v1/marketplace", params={"limit": 1}, headers=c.owner_headers).json()
    assert len(first["items"]) == 1 and first["next_cursor"]
    second = client.get(
        "/v1/marketplace",
        params={"limit": 1, "cursor": first["next_cursor"]},
        headers=c.owner_headers,
    ).json()
    assert second["items"] and second["items"][0] != first["items"][0]
    assert client.get("/v1/marketplace").status_code == 401
