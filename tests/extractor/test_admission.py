"""Extractor work is not amplified (docs/threats.md, "Extractor work"): a pixel budget per
request, decoding bounded and counted in load shedding, no work for a client that left, and no
retry of a large batch that timed out."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from prometheus_client import generate_latest

import extractor.admission as admission
from extractor.checkpoint import LoadedExtractor, load_checkpoint
from extractor.client import ExtractorClient, ExtractorUnavailable
from extractor.server import create_app
from tests.fixtures.processes import free_port


def png(seed: int, side: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


def files(n: int, side: int = 40) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.png", png(i, side), "image/png")) for i in range(n)]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint: Path) -> LoadedExtractor:
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture
def slow_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each image takes 0.4 s to decode; returns the names decoded so far."""
    decoded: list[str] = []
    real = admission.load_tensor

    def slow(data, name, cfg, **kw):  # type: ignore[no-untyped-def]
        time.sleep(0.4)
        decoded.append(name)
        return real(data, name, cfg, **kw)

    monkeypatch.setattr(admission, "load_tensor", slow)
    return decoded


async def _client(app) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x", timeout=30) as c:
            yield c


async def test_a_request_over_its_pixel_budget_is_refused_before_decoding(
    loaded: LoadedExtractor, slow_decoding: list[str]
) -> None:
    app = create_app(loaded, reference=True, max_request_pixels=3 * 40 * 40)
    async for c in _client(app):
        r = await c.post("/v1/features", files=files(4))
        assert r.status_code == 413 and r.json()["code"] == "request_pixels_exceeded", r.text
        assert slow_decoding == []  # nothing was decoded
        ok = await c.post("/v1/features", files=files(3))
        assert ok.status_code == 200


async def test_images_waiting_to_be_decoded_count_in_load_shedding(
    loaded: LoadedExtractor, slow_decoding: list[str]
) -> None:
    """Queue room for 8: one request's 6 images are still decoding (one at a time) when 4 more
    arrive; they are turned away at once, before any of them is decoded."""
    app = create_app(loaded, reference=True, queue_size=8, decode_concurrency=1, max_batch=8)
    async for c in _client(app):
        first = asyncio.ensure_future(c.post("/v1/features", files=files(6)))
        await asyncio.sleep(0.5)  # the first request is decoding its second image
        start = time.monotonic()
        second = await c.post("/v1/features", files=files(4))
        assert second.status_code == 503 and second.json()["code"] == "extractor_busy"
        assert time.monotonic() - start < 1.0  # refused, not decoded and then refused
        assert (await first).status_code == 200
        assert len(slow_decoding) == 6  # the refused images were never decoded


@pytest.fixture
def extractor_server(loaded: LoadedExtractor) -> Iterator[tuple[str, object]]:
    app = create_app(loaded, reference=True, decode_concurrency=1)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(10)


def test_a_client_that_gives_up_stops_the_work(
    extractor_server: tuple[str, object], slow_decoding: list[str]
) -> None:
    """The API's call times out after 0.6 s and closes its connection: the extractor stops
    decoding that request's images instead of finishing all 6 for nobody."""
    url, app = extractor_server
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/features", files=files(6), timeout=0.6)
    time.sleep(2.5)  # what a server that kept going would have decoded by now: 6 more images
    assert len(slow_decoding) <= 3, slow_decoding
    text = generate_latest(app.state.metrics.registry).decode()  # type: ignore[attr-defined]
    assert 'extractor_rejected_total{code="client_gone"} 1.0' in text


def _timing_out(attempts: list[str], exc_type: type[Exception]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/info":
            return httpx.Response(200, json={"id": "a" * 64, "feature_dim": 20})
        attempts.append(str(request.url.host))
        raise exc_type("timed out", request=request)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("images", "exc_type", "expected"),
    [
        (8, httpx.ReadTimeout, 1),  # large and possibly worked on: not sent again
        (2, httpx.ReadTimeout, 6),  # small: every replica, every round
        (8, httpx.ConnectTimeout, 6),  # never reached a replica: no work done, try the others
    ],
)
def test_a_large_batch_that_timed_out_is_not_retried(
    images: int, exc_type: type[Exception], expected: int
) -> None:
    attempts: list[str] = []
    client = ExtractorClient(
        ["http://r1", "http://r2"],
        retries=2,
        backoff=0.0,
        sync_transport=_timing_out(attempts, exc_type),
        retry_max_images=4,
    )
    with pytest.raises(ExtractorUnavailable):
        client.features_sync([(f"{i}.png", b"x") for i in range(images)])
    assert len(attempts) == expected, attempts
