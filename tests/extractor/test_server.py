"""The extractor app in process (real ASGI over httpx): features, batching, limits, errors."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from extractor.checkpoint import LoadedExtractor, load_checkpoint
from extractor.imaging import preprocess_batch
from extractor.packing import pack_signs
from extractor.server import create_app
from extractor.wire import CONTENT_TYPE, decode_features
from tests.extractor.test_imaging import png_declaring


def png(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


IMAGES = [(f"img{i}.png", png(i)) for i in range(8)]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint: Path) -> LoadedExtractor:
    return load_checkpoint(tiny_checkpoint)


def expected(loaded: LoadedExtractor, files: list[tuple[str, bytes]]) -> tuple:
    """In-process features, one image at a time (no batching effects)."""
    rows = [loaded.extract(preprocess_batch([f], loaded.pretrained_cfg)) for f in files]
    return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])


async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://extractor") as c:
            yield c


@pytest.fixture
async def app(loaded: LoadedExtractor) -> FastAPI:
    return create_app(loaded, reference=True, max_batch=8, max_wait_ms=30, queue_size=64)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async for c in serve(app):
        yield c


async def post(client: httpx.AsyncClient, files: list[tuple[str, bytes]], **kw) -> httpx.Response:
    return await client.post(
        "/v1/features", files=[("files", (n, d, "image/png")) for n, d in files], **kw
    )


def batch_count(app: FastAPI) -> float:
    text = generate_latest(app.state.metrics.registry).decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == "extractor_batch_size":
            return next(s.value for s in fam.samples if s.name.endswith("_count"))
    raise AssertionError("no batch size metric")


async def test_server_features_equal_in_process_features(client, loaded) -> None:
    r = await post(client, IMAGES[:3])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == CONTENT_TYPE
    got = decode_features(r.content)
    floats, bits = expected(loaded, IMAGES[:3])
    assert got.extractor_id == loaded.id == r.headers["x-extractor-id"]
    assert np.array_equal(got.bits, bits)
    np.testing.assert_allclose(got.floats, floats, rtol=1e-5, atol=1e-6)
    assert np.array_equal(got.bits, pack_signs(got.floats))


async def test_features_do_not_depend_on_batching(client, loaded) -> None:
    alone = decode_features((await post(client, IMAGES[5:6])).content)
    together = decode_features((await post(client, IMAGES)).content)
    assert np.array_equal(alone.bits[0], together.bits[5])
    np.testing.assert_allclose(alone.floats[0], together.floats[5], rtol=1e-5, atol=1e-6)


async def test_32_concurrent_requests_are_answered_correctly_in_shared_batches(
    app, client, loaded
) -> None:
    files = [(f"c{i}.png", png(100 + i)) for i in range(32)]
    floats, bits = expected(loaded, files)
    before = batch_count(app)
    responses = await asyncio.gather(*(post(client, [f]) for f in files))
    assert [r.status_code for r in responses] == [200] * 32
    for i, r in enumerate(responses):
        got = decode_features(r.content)
        assert np.array_equal(got.bits[0], bits[i]), i
        np.testing.assert_allclose(got.floats[0], floats[i], rtol=1e-5, atol=1e-6)
    assert batch_count(app) - before < 32  # some requests shared a forward pass


async def test_a_lone_small_request_runs_on_the_loop_and_others_go_through_the_queue(
    client, loaded, monkeypatch
) -> None:
    """Same features either way; only a one-image request under `INLINE_PIXELS` that is alone
    in the process skips the decoding and inference threads."""
    import extractor.server as server
    from extractor.batcher import MicroBatcher

    calls: list[int] = []
    run_now = MicroBatcher.run_now

    def counted(self, x):  # type: ignore[no-untyped-def]
        calls.append(x.shape[0])
        return run_now(self, x)

    monkeypatch.setattr(MicroBatcher, "run_now", counted)
    floats, bits = expected(loaded, IMAGES[:2])
    alone = decode_features((await post(client, IMAGES[:1])).content)
    assert calls == [1]
    assert np.array_equal(alone.bits, bits[:1])
    np.testing.assert_allclose(alone.floats, floats[:1], rtol=1e-5, atol=1e-6)
    assert (await post(client, IMAGES[:2])).status_code == 200  # two images: queued
    await asyncio.gather(post(client, IMAGES[:1]), post(client, IMAGES[1:2]))  # not alone
    monkeypatch.setattr(server, "INLINE_PIXELS", 48 * 40 - 1)  # one pixel too many
    assert (await post(client, IMAGES[:1])).status_code == 200
    assert calls == [1]


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"not an image", 422, "invalid_image"),
        (b"%PDF-1.4\n%%EOF\n", 415, "unsupported_image_format"),
        (png(1)[:200], 422, "invalid_image"),
        (png_declaring(20_000, 20_000), 413, "image_too_large"),
    ],
)
@pytest.mark.parametrize("alone", [False, True], ids=["with-another", "alone"])
async def test_bad_image_is_a_problem_naming_the_file(client, data, status, code, alone) -> None:
    r = await post(client, [("broken.png", data)] if alone else [IMAGES[0], ("broken.png", data)])
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == code and body["filename"] == "broken.png"
    assert "broken.png" in body["detail"] and body["reason"] in body["detail"]


async def test_no_files_is_422_and_a_non_multipart_body_is_400(client) -> None:
    r = await client.post("/v1/features", files=[("other", ("a.png", png(0)))])
    assert (r.status_code, r.json()["code"]) == (422, "invalid_files")
    r = await client.post("/v1/features", content=b"{}", headers={"content-type": "multipart/x"})
    assert r.status_code in (400, 422)


async def test_full_queue_answers_503_with_retry_after(loaded) -> None:
    app = create_app(loaded, reference=True, queue_size=2)
    async for client in serve(app):
        r = await post(client, IMAGES[:3])
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["code"] == "extractor_busy"


async def test_body_over_the_limit_is_413_with_or_without_content_length(loaded) -> None:
    app = create_app(loaded, reference=True, max_body=10_000)
    async for client in serve(app):
        r = await post(client, [("big.png", png(0, (200, 200)))])
        assert (r.status_code, r.json()["code"]) == (413, "body_too_large")

        encoded = httpx.Request(
            "POST", "http://x", files=[("files", ("big.png", png(0, (200, 200))))]
        )
        body = encoded.read()

        async def chunks(data: bytes = body) -> AsyncIterator[bytes]:  # chunked: no length
            for i in range(0, len(data), 4096):
                yield data[i : i + 4096]

        r = await client.post(
            "/v1/features",
            content=chunks(),
            headers={"content-type": encoded.headers["content-type"]},
        )
        assert "content-length" not in r.request.headers
        assert (r.status_code, r.json()["code"]) == (413, "body_too_large")


async def test_info_health_ready_and_metrics(client, loaded) -> None:
    info = (await client.get("/v1/info")).json()
    for key in ("id", "architecture", "input_size", "feature_dim", "parameters", "size_bytes"):
        assert key in info
    assert info["id"] == loaded.id and info["feature_dim"] == 20
    assert info["path"] == "reference" and "bits_per_weight" in info
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    await post(client, IMAGES[:1])
    text = (await client.get("/metrics")).text
    for name in (
        "extractor_request_duration_seconds",
        "extractor_batch_size",
        "extractor_queue_depth",
    ):
        assert name in text


async def test_not_ready_once_the_inference_thread_stopped(loaded) -> None:
    app = create_app(loaded, reference=True)
    async with app.router.lifespan_context(app):
        pass  # started, then shut down
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
        assert (await post(client, IMAGES[:1])).status_code == 503


async def test_request_id_is_echoed_or_generated(client) -> None:
    r = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.get("/healthz", headers={"X-Request-ID": "bad id\nwith newline"})
    assert r.headers["x-request-id"] != "bad id\nwith newline"
    assert len(r.headers["x-request-id"]) == 32


async def test_default_path_gives_the_reference_sign_bits(loaded) -> None:
    from extractor.kernels import ops

    fast_app = create_app(loaded, reference=False, max_batch=8)
    async for client in serve(fast_app):
        info = (await client.get("/v1/info")).json()
        got = decode_features((await post(client, IMAGES)).content)
    assert info["path"] == ("fast" if ops.backend() == "native" else "reference")
    floats, bits = expected(loaded, IMAGES)
    assert np.array_equal(got.bits, bits)
    np.testing.assert_allclose(got.floats, floats, rtol=1e-5, atol=1e-6)


async def test_each_request_is_logged_as_json_with_its_request_id(client, caplog) -> None:
    import json

    from extractor.web.logs import JsonFormatter

    with caplog.at_level("INFO", logger="headhub.access"):
        await post(client, IMAGES[:1], headers={"X-Request-ID": "trace-42"})
    access = [r for r in caplog.records if r.name == "headhub.access"]
    lines = [json.loads(JsonFormatter("extractor").format(r)) for r in access]
    assert any(
        doc["request_id"] == "trace-42" and doc["path"] == "/v1/features" and doc["status"] == 200
        for doc in lines
    )


async def test_framed_images_body_gives_the_multipart_features(client) -> None:
    from extractor.wire import IMAGES_CONTENT_TYPE, encode_images

    multipart = decode_features((await post(client, IMAGES[:3])).content)
    r = await client.post(
        "/v1/features",
        content=encode_images(IMAGES[:3]),
        headers={"content-type": IMAGES_CONTENT_TYPE},
    )
    assert r.status_code == 200, r.text
    framed = decode_features(r.content)
    assert np.array_equal(framed.floats, multipart.floats)
    assert np.array_equal(framed.bits, multipart.bits)
    bad = await client.post(
        "/v1/features", content=b"HHIM\x01\x00", headers={"content-type": IMAGES_CONTENT_TYPE}
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_images_body"


def test_client_over_a_unix_socket(loaded, tmp_path) -> None:
    """`unix:/path` replicas: the API's async client and the worker's blocking one."""
    import threading
    import time

    import uvicorn

    from extractor.client import ExtractorClient

    sock = tmp_path / "extractor.sock"
    app = create_app(loaded, reference=True)
    server = uvicorn.Server(uvicorn.Config(app, uds=str(sock), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        _floats, bits = expected(loaded, IMAGES[:2])
        with ExtractorClient(f"unix:{sock}") as c:
            got = c.features_sync(IMAGES[:2])
            assert c.info_sync()["id"] == loaded.id
        assert np.array_equal(got.bits, bits)

        async def async_call() -> object:
            async with ExtractorClient(f"unix://{sock}") as c:
                return await c.features(IMAGES[:2])

        assert np.array_equal(asyncio.run(async_call()).bits, bits)  # type: ignore[attr-defined]

        # a 32-image body leaves in one write, not one per default-sized send buffer
        from extractor.client import UNIX_SOCKET_OPTIONS
        from extractor.transport import SEND_BUFFER, LeanTransport

        c = ExtractorClient(f"unix:{sock}")
        lean = c._async_client(f"unix:{sock}")._transport  # type: ignore[attr-defined]
        assert isinstance(lean, LeanTransport) and lean.uds == str(sock)
        assert lean.send_buffer == SEND_BUFFER
        sync = c._sync_client(f"unix:{sock}")._transport  # type: ignore[attr-defined]
        assert sync._pool._socket_options == UNIX_SOCKET_OPTIONS
        # plain TCP goes through the lean transport too (one for every host); TLS keeps httpx's
        tcp = c._async_client("http://127.0.0.1:1")._transport  # type: ignore[attr-defined]
        assert isinstance(tcp, LeanTransport) and tcp.uds is None
        assert c._async_client("http://10.0.0.2:8001")._transport is tcp  # type: ignore[attr-defined]
        tls = c._async_client("https://127.0.0.1:1")._transport  # type: ignore[attr-defined]
        assert isinstance(tls, httpx.AsyncHTTPTransport)
    finally:
        server.should_exit = True
        thread.join(10)
