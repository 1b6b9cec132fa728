"""Stored text that other people see holds no control characters, and names are whole-string
matches (docs/threats.md, "Stored text shown to other people")."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.heads.refs import InvalidHeadRef, is_valid_alias, is_valid_head_name, parse_ref
from service.text import first_control
from tests.conftest import ADMIN_HEADERS, TenantCreds
from tests.heads.helpers import add_version

ESCAPES = [
    "\x1b[2J",  # ESC: clear the screen
    "\x1b]8;;https://evil.example/\x1b\\",  # OSC 8 hyperlink
    "\x9b31m",  # C1 CSI
    "\u202eexe.gnp",  # right-to-left override
    "\x07",  # BEL
    "a\rb",  # carriage return: overwrite what the line showed
    "\x00",
]


@pytest.mark.parametrize("evil", ESCAPES)
def test_descriptions_and_names_with_control_characters_are_refused(
    client: TestClient, make_tenant, app, evil: str
) -> None:
    t: TenantCreds = make_tenant()
    r = client.post(
        "/v1/datasets", json={"name": "d", "description": f"ok {evil}"}, headers=t.owner_headers
    )
    assert r.status_code == 422 and r.json()["code"] == "control_characters", r.text
    r = client.post(
        f"/v1/tenants/{t.name}/keys", json={"scope": "predict", "name": evil}, headers=ADMIN_HEADERS
    )
    assert r.status_code == 422 and r.json()["code"] == "control_characters", r.text
    add_version(app, t.id, "flowers")
    r = client.patch(
        f"/v1/heads/{t.name}/flowers",
        json={"visibility": "public", "description": f"roses {evil}"},
        headers=t.owner_headers,
    )
    assert r.status_code == 422 and r.json()["code"] == "control_characters", r.text
    head = client.get(f"/v1/heads/{t.name}/flowers", headers=t.owner_headers).json()
    assert head["visibility"] == "private" and head["description"] == ""
    # an extractor's note is shown to every tenant (GET /v1/extractors)
    r = client.post("/v1/extractors", json={"id": "e" * 64, "note": evil}, headers=ADMIN_HEADERS)
    assert r.status_code == 422 and r.json()["code"] == "control_characters", r.text
    r = client.patch(f"/v1/extractors/{'e' * 64}", json={"note": evil}, headers=ADMIN_HEADERS)
    assert r.status_code == 422 and r.json()["code"] == "control_characters", r.text


def test_descriptions_keep_line_breaks_and_any_script(client: TestClient, make_tenant) -> None:
    t: TenantCreds = make_tenant()
    text = "Fleurs du jardin 🌸\n- rose\n- tulipe\tété, 薔薇, ורד"
    r = client.post(
        "/v1/datasets", json={"name": "d", "description": text}, headers=t.owner_headers
    )
    assert r.status_code == 201, r.text
    assert r.json()["description"] == text


def test_an_idempotency_key_with_a_control_character_is_refused(
    client: TestClient, make_tenant
) -> None:
    t: TenantCreds = make_tenant()
    r = client.post(
        "/v1/jobs",
        json={"dataset_id": "x", "head": "h", "head_type": "float"},
        headers=t.owner_headers | {"Idempotency-Key": b"retry\x9b2J"},  # type: ignore[dict-item]
    )
    assert r.status_code == 422 and r.json()["code"] == "control_characters", r.text


def test_alias_and_names_do_not_accept_a_trailing_newline(
    client: TestClient, make_tenant, app
) -> None:
    """`re.match` with `$` also matches before a final newline."""
    assert not is_valid_alias("production\n")
    assert not is_valid_head_name("flowers\n")
    with pytest.raises(InvalidHeadRef):
        parse_ref("acme\n/flowers")
    with pytest.raises(InvalidHeadRef):
        parse_ref("acme/flowers:³")  # a digit to str.isdigit, not to int()
    t: TenantCreds = make_tenant()
    add_version(app, t.id, "flowers")
    r = client.put(
        f"/v1/heads/{t.name}/flowers/aliases/production%0A",
        json={"version": 1},
        headers=t.owner_headers,
    )
    assert r.status_code == 422 and r.json()["code"] == "invalid_alias", r.text
    assert (
        client.get(f"/v1/heads/{t.name}/flowers", headers=t.owner_headers).json()["aliases"] == {}
    )


def test_first_control_names_the_character() -> None:
    assert first_control("plain text") is None
    assert first_control("tab\tand\nline", allow_line_breaks=True) is None
    assert first_control("tab\there") == "\t"
    assert first_control("x\u2028y", allow_line_breaks=True) == "\u2028"
    assert first_control("x\u200dy") is None  # zero-width joiner: emoji sequences need it
