"""What the extractor knows about itself stays inside
(docs/threats.md, "What one tenant learns about others, and about the service"): the public
`GET /v1/extractor` passes on only its public fields, and a 502 does not name the replica that
failed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from fastapi.testclient import TestClient

from extractor.wire import CONTENT_TYPE, FeatureBatch, encode_features
from service.app import create_app
from tests.conftest import create_tenant, make_settings
from tests.heads.helpers import add_version
from tests.predict.test_extractor_faults import one_png

LEAKY_ID = "7" * 64
INFO = {
    "id": LEAKY_ID,
    "architecture": "birealnet_112",
    "input_size": [3, 112, 112],
    "feature_dim": 20,
    "parameters": 1000,
    "size_bytes": 500,
    "bits_per_weight": 1.9,
    "preprocessing": {"input_size": [3, 112, 112], "mean": [0.5] * 3, "std": [0.25] * 3},
    "path": "fast",
    "cpu": "AMD EPYC 7B13 avx2 avx512f",
    "provenance": {"command": "python -m extractor.cli train --out /home/op/runs/secret-run"},
    "max_batch": 32,
}


class _Leaky(BaseHTTPRequestHandler):
    """Answers /v1/info with operator details, and /v1/features with the wrong width."""

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(200, json.dumps(INFO).encode(), "application/json")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        floats = np.ones((1, 7), dtype=np.float32)  # 7 wide, not 20
        batch = FeatureBatch(LEAKY_ID, floats, np.packbits(floats > 0, axis=1, bitorder="little"))
        self._send(200, encode_features(batch), CONTENT_TYPE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def leaky_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Leaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_extractor_info_and_502s_keep_internals_inside(leaky_url, db_url, tmp_path) -> None:
    settings = make_settings(tmp_path, db_url, extractor_urls=[leaky_url])
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        t = create_tenant(c, "leak")
        info = c.get("/v1/extractor", headers=t.predict_headers)
        assert info.status_code == 200, info.text
        body = info.json()
        assert body["id"] == LEAKY_ID and body["feature_dim"] == 20
        text = info.text
        for secret in ("provenance", "secret-run", "EPYC", "avx", "max_batch", '"path"'):
            assert secret not in text, secret

        add_version(c.app, t.id, "h", extractor_id=LEAKY_ID, d=20)  # type: ignore[attr-defined]
        r = c.post("/v1/predict", params={"heads": "h"}, files=one_png(), headers=t.predict_headers)
        assert r.status_code == 502 and r.json()["code"] == "extractor_bad_response"
        assert "127.0.0.1" not in r.text and "http://" not in r.text, r.text


def test_the_fallback_passes_on_public_fields_only() -> None:
    """Before the registry has a default, /v1/extractor answers from the process's /v1/info."""
    from service.predict.extractor_info import ExtractorInfo, public_info

    shown = ExtractorInfo.model_validate(public_info(INFO)).model_dump()
    assert set(shown) == {
        "id",
        "architecture",
        "input_size",
        "feature_dim",
        "parameters",
        "size_bytes",
        "bits_per_weight",
        "preprocessing",
    }
