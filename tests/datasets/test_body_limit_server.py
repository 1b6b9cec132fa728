"""The body limit against a real uvicorn: a chunked upload is cut off at the limit
(docs/architecture.md, "Untrusted input")."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.settings import Settings
from tests.conftest import ADMIN_HEADERS
from tests.fixtures.processes import free_port


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


def _owner_and_dataset(url: str) -> tuple[str, str]:
    name = f"chunk-{time.monotonic_ns() % 10**8}"
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.post("/v1/tenants", json={"name": name}, headers=ADMIN_HEADERS).status_code == 201
        key = c.post(
            f"/v1/tenants/{name}/keys", json={"scope": "owner", "name": "k"}, headers=ADMIN_HEADERS
        ).json()["key"]
        ds = c.post("/v1/datasets", json={"name": "d"}, headers={"Authorization": f"Bearer {key}"})
        return key, ds.json()["id"]


def test_chunked_upload_gets_413_before_the_client_finishes(
    server_url: str, settings: Settings
) -> None:
    key, ds = _owner_and_dataset(server_url)
    host, port = server_url.removeprefix("http://").split(":")
    boundary = "b0undary"
    head = (
        f"POST /v1/datasets/{ds}/images HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    preamble = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="label"\r\n\r\ndaisy\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    piece = b"\0" * (64 * 1024)
    limit = settings.max_body_bytes
    sent, response = 0, b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(preamble), preamble))
        sock.settimeout(0.01)
        while sent < 20 * limit and not response:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            except OSError:  # the server closed its side after answering
                break
            with contextlib.suppress(TimeoutError):
                response = sock.recv(65536)
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                response += chunk
        except OSError:
            pass
    status_line = response.split(b"\r\n", 1)[0]
    assert b" 413 " in status_line, response[:300]
    assert b"body_too_large" in response
    print(f"sent {sent} bytes of a {20 * limit} byte body before the 413 (limit {limit})")
    assert sent < 2 * limit  # the server stopped reading near the limit, not at 20x
