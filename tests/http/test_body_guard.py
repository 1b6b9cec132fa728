"""The key before the body, a body limit per route, and security headers (docs/threats.md).

FastAPI parses a body before it resolves the dependency that checks the key: an anonymous 32 MB
body was buffered and parsed, then answered 401 seconds later. Against a real uvicorn, these
tests send only the headers of a large body and expect the answer before the body.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import ADMIN_HEADERS, TenantCreds, create_tenant, make_settings
from tests.fixtures.processes import free_port

MB = 1024 * 1024


@pytest.fixture(scope="module")
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(
        tmp_path_factory.mktemp("data"),
        db_url,
        featurize_on_upload=False,
        max_body_bytes=8 * MB,
        max_features_body_bytes=1 * MB,
        max_json_body_bytes=16 * 1024,
    )


@pytest.fixture(scope="module")
def server_url(settings: Settings) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def owner(server_url: str) -> tuple[dict[str, str], str]:
    name = f"guard-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=server_url, timeout=10) as c:
        assert c.post("/v1/tenants", json={"name": name}, headers=ADMIN_HEADERS).status_code == 201
        key = c.post(
            f"/v1/tenants/{name}/keys", json={"scope": "owner", "name": "k"}, headers=ADMIN_HEADERS
        ).json()["key"]
        headers = {"Authorization": f"Bearer {key}"}
        ds = c.post("/v1/datasets", json={"name": "d"}, headers=headers)
        return headers, ds.json()["id"]


def headers_only(url: str, request_head: str, *, wait_s: float = 10.0) -> tuple[bytes, float]:
    """Send a request's head (and no body), then read what the server answers, and how fast."""
    host, port = url.removeprefix("http://").split(":")
    start = time.monotonic()
    answer = b""
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(request_head.encode())
        try:  # a refusal closes the connection (its body was never read)
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer, time.monotonic() - start


def head(method: str, path: str, *lines: str) -> str:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{x}\r\n" for x in lines) + "\r\n"


@pytest.mark.parametrize(
    "path,content_type",
    [
        ("/v1/predict/features", "application/json"),
        ("/v1/predict?heads=a/b", "multipart/form-data; boundary=x"),
        ("/v1/datasets/whatever/images", "multipart/form-data; boundary=x"),
        ("/v1/jobs", "application/json"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer hh_0123456789abcdef_wrong", "Bearer nonsense"])
def test_a_big_body_without_a_valid_key_is_refused_before_it_is_read(
    server_url: str, path: str, content_type: str, auth: str | None
) -> None:
    lines = [f"Content-Type: {content_type}", f"Content-Length: {32 * MB}"]
    if auth:
        lines.append(f"Authorization: {auth}")
    answer, took = headers_only(server_url, head("POST", path, *lines))
    status_line = answer.split(b"\r\n", 1)[0]
    assert b" 401 " in status_line, (answer[:300], took)
    assert b"www-authenticate: bearer" in answer.lower()


def test_a_chunked_body_without_a_key_is_refused_before_it_is_read(server_url: str) -> None:
    answer, _ = headers_only(
        server_url,
        head(
            "POST",
            "/v1/datasets/x/images",
            "Content-Type: multipart/form-data; boundary=x",
            "Transfer-Encoding: chunked",
        ),
    )
    assert b" 401 " in answer.split(b"\r\n", 1)[0], answer[:300]


def test_a_valid_key_gets_the_routes_own_limit_before_the_body(
    server_url: str, owner: tuple[dict[str, str], str]
) -> None:
    """Declared sizes: over the JSON limit on a JSON route, over the features limit on
    /v1/predict/features: 413 at once; the same size on the upload route is read (it waits)."""
    headers, dataset_id = owner
    auth = f"Authorization: {headers['Authorization']}"
    for path, size in (("/v1/datasets", 17 * 1024), ("/v1/predict/features", 2 * MB)):
        answer, _ = headers_only(
            server_url,
            head("POST", path, auth, "Content-Type: application/json", f"Content-Length: {size}"),
        )
        assert b" 413 " in answer.split(b"\r\n", 1)[0], (path, answer[:300])
        assert b"body_too_large" in answer
    answer, _ = headers_only(
        server_url,
        head(
            "POST",
            f"/v1/datasets/{dataset_id}/images",
            auth,
            "Content-Type: multipart/form-data; boundary=x",
            f"Content-Length: {2 * MB}",
        ),
        wait_s=2.0,
    )
    assert answer == b"", answer[:300]  # under the upload limit: the server waits for the body


def test_small_json_limit_on_every_other_route(
    server_url: str, owner: tuple[dict[str, str], str]
) -> None:
    headers, _ = owner
    with httpx.Client(base_url=server_url, timeout=10) as c:
        big = c.post(
            "/v1/datasets", json={"name": "x", "description": "a" * 20_000}, headers=headers
        )
        assert big.status_code == 413 and big.json()["code"] == "body_too_large"
        ok = c.post("/v1/datasets", json={"name": "y", "description": "a" * 500}, headers=headers)
        assert ok.status_code == 201, ok.text


# -- security headers, in process --------------------------------------------------------------
@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_api_answers_carry_security_headers(client: TestClient) -> None:
    tenant: TenantCreds = create_tenant(client, "hdr")
    for r in (
        client.get("/v1/datasets", headers=tenant.owner_headers),
        client.get("/v1/datasets"),  # a 401 problem
        client.get("/healthz"),
        client.post(
            f"/v1/tenants/{tenant.name}/keys",
            json={"scope": "predict", "name": "k"},
            headers=ADMIN_HEADERS,
        ),
    ):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        if r.url.path.startswith("/v1/"):
            assert r.headers["cache-control"] == "no-store"


def test_pages_keep_their_own_policies(client: TestClient) -> None:
    """The console sets a CSP of its own; the interactive docs are HTML that loads scripts."""
    console = client.get("/console/")
    if console.status_code == 200:
        assert console.headers["content-security-policy"].count("default-src") == 1
        assert "script-src 'self'" in console.headers["content-security-policy"]
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "content-security-policy" not in docs.headers
    assert docs.headers["x-content-type-options"] == "nosniff"
