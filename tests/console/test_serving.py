"""How the API serves the console (no browser): files, headers, packaging, `GET /v1/whoami`."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_HEADERS, TenantCreds

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "service/console/static"
SOURCES = [*sorted(STATIC.rglob("*.js")), STATIC / "index.html"]

# Ways to turn a string into markup or code; the console builds DOM nodes instead (dom.js).
FORBIDDEN = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
    r"setAttribute\(\s*['\"]on|javascript:"
)


def test_console_page_and_assets_carry_the_security_headers(client: TestClient) -> None:
    for path in ("/console/", "/console/app.js", "/console/style.css", "/console/pages/heads.js"):
        r = client.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp, path
        assert "style-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == "no-referrer", path
        assert r.headers["x-frame-options"] == "DENY", path
    assert client.get("/console/").headers["content-type"].startswith("text/html")
    assert client.get("/console/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/console/style.css").headers["content-type"].startswith("text/css")


def test_console_without_slash_redirects_and_unknown_files_are_404(client: TestClient) -> None:
    r = client.get("/console", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"].endswith("console/")
    for path in ("/console/nope.js", "/console/router.py", "/console/static/app.js"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.headers["x-content-type-options"] == "nosniff", path
    for path in ("/console/../app.py", "/console/%2e%2e/router.py", "/console/..%2frouter.py"):
        assert client.get(path).status_code == 404, path


def test_an_unchanged_asset_is_not_sent_again(client: TestClient) -> None:
    first = client.get("/console/app.js")
    again = client.get("/console/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert first.headers["cache-control"] == "no-cache"


def test_the_page_loads_scripts_and_styles_only_from_files() -> None:
    html = (STATIC / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="app.js">']
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.relative_to(STATIC).as_posix())
def test_no_console_source_turns_strings_into_markup_or_code(source: Path) -> None:
    hits = [
        f"{i}: {line.strip()}"
        for i, line in enumerate(source.read_text().splitlines(), 1)
        if FORBIDDEN.search(line) and not line.lstrip().startswith("//")
    ]
    assert hits == []


def test_every_console_file_is_package_data() -> None:
    """A non-editable install ships what the router serves."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["service.console"]
    shipped = {p for g in globs for p in (ROOT / "service/console").glob(g)}
    served = {p for p in STATIC.rglob("*") if p.is_file()}
    assert served - shipped == set()


def test_whoami_tells_a_key_its_scope_and_tenant(
    client: TestClient, make_tenant: Callable[[str], TenantCreds]
) -> None:
    t = make_tenant("who")
    owner = client.get("/v1/whoami", headers=t.owner_headers)
    assert owner.status_code == 200
    assert owner.json() == {
        "scope": "owner",
        "tenant": t.name,
        "key_id": t.owner_key.split("_", 2)[1],
    }
    predict = client.get("/v1/whoami", headers=t.predict_headers).json()
    assert (predict["scope"], predict["tenant"]) == ("predict", t.name)
    admin = client.get("/v1/whoami", headers=ADMIN_HEADERS).json()
    assert (admin["scope"], admin["tenant"]) == ("admin", None)
    for headers in ({}, {"Authorization": "Bearer hh_nope_nope"}):
        r = client.get("/v1/whoami", headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"].startswith("application/problem+json")


def test_whoami_is_in_the_openapi_document_and_the_console_is_not(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v1/whoami" in spec["paths"]
    assert spec["components"]["schemas"]["WhoAmI"].get("examples")
    assert not [p for p in spec["paths"] if p.startswith("/console")]
