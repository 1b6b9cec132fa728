"""Extractor faults: stopped -> 503 + Retry-After, garbage -> 502 (docs/architecture.md,
"Failure handling at the boundaries")."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from extractor.packing import pack_signs
from extractor.wire import CONTENT_TYPE, FeatureBatch, encode_features
from service.app import create_app
from service.db import migrate
from tests.conftest import create_tenant, make_settings
from tests.fixtures.extractor import start_extractor
from tests.heads.helpers import add_version

GARBAGE_ID = "9" * 64


class _Garbage(BaseHTTPRequestHandler):
    """Answers /v1/info correctly and /v1/features with NaN features: a broken replica."""

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        doc = {"id": GARBAGE_ID, "feature_dim": 20, "architecture": "x", "input_size": [3, 32, 32]}
        self._send(200, json.dumps(doc).encode(), "application/json")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        floats = np.full((1, 20), np.nan, dtype=np.float32)
        batch = FeatureBatch(GARBAGE_ID, floats, pack_signs(np.zeros((1, 20))))
        self._send(200, encode_features(batch), CONTENT_TYPE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def garbage_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def one_png() -> list[tuple[str, tuple[str, bytes, str]]]:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, format="PNG")
    return [("files", ("red.png", buf.getvalue(), "image/png"))]


def test_stopped_extractor_gives_503_with_retry_after(tiny_checkpoint, tmp_path) -> None:
    """Backend-independent, so it runs once (on SQLite) with a replica it may stop."""
    db_url = f"sqlite:///{tmp_path / 'headhub.db'}"
    migrate(db_url)
    ext = start_extractor(tiny_checkpoint, tmp_path)
    try:
        settings = make_settings(tmp_path / "data", db_url, extractor_urls=[ext.url])
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            _check_outage(client, ext)
    finally:
        ext.stop()


def _check_outage(client: TestClient, ext: Any) -> None:
    info = httpx.get(f"{ext.url}/v1/info").json()
    t = create_tenant(client, "down")
    add_version(client.app, t.id, "h", extractor_id=info["id"], d=info["feature_dim"])  # type: ignore[attr-defined]
    params = {"heads": "h"}
    ok = client.post("/v1/predict", params=params, files=one_png(), headers=t.predict_headers)
    assert ok.status_code == 200, ok.text
    assert client.get("/readyz").status_code == 200

    ext.stop()
    r = client.post("/v1/predict", params=params, files=one_png(), headers=t.predict_headers)
    assert r.status_code == 503 and r.json()["code"] == "extractor_unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    assert client.get("/healthz").status_code == 200
    # /readyz reuses its answer for HEADHUB_PROBE_CACHE_S: the outage shows once that has passed
    deadline = time.monotonic() + 10
    while client.get("/readyz").status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get("/readyz").status_code == 503
    # Heads alone still serve clients that bring their own features.
    body = {"extractor_id": info["id"], "heads": ["h"], "features": [[0.5] * info["feature_dim"]]}
    r = client.post("/v1/predict/features", json=body, headers=t.predict_headers)
    assert r.status_code == 200


def test_garbage_from_the_extractor_is_502(garbage_url, db_url, tmp_path) -> None:
    garbage_settings = make_settings(tmp_path, db_url, extractor_urls=[garbage_url])
    with TestClient(create_app(garbage_settings), raise_server_exceptions=False) as c:
        t = create_tenant(c, "garbage")
        add_version(c.app, t.id, "h", extractor_id=GARBAGE_ID, d=20)  # type: ignore[attr-defined]
        r = c.post("/v1/predict", params={"heads": "h"}, files=one_png(), headers=t.predict_headers)
        assert r.status_code == 502 and r.json()["code"] == "extractor_bad_response"
        usage = c.get(f"/v1/heads/{t.name}/h", headers=t.owner_headers).json()["usage_count"]
        assert usage == 0  # nothing persisted for a failed prediction
