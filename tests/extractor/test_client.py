"""ExtractorClient: against a real `headhub extractor serve` process, and against fake replicas
that fail or answer garbage (docs/architecture.md, "Failure handling at the boundaries")."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from extractor.checkpoint import load_checkpoint
from extractor.client import (
    ExtractorBadResponse,
    ExtractorClient,
    ExtractorRejectedImage,
    ExtractorUnavailable,
)
from extractor.imaging import preprocess_batch
from extractor.packing import pack_signs
from extractor.wire import CONTENT_TYPE, FeatureBatch, encode_features
from tests.fixtures.extractor import start_extractor
from tests.fixtures.processes import free_port


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


FILES = [("a.png", png(1)), ("b.png", png(2))]


# -- a real extractor process ---------------------------------------------------------------------
async def test_async_client_gets_the_in_process_features_from_a_real_process(
    extractor_process: str, tiny_checkpoint: Path
) -> None:
    loaded = load_checkpoint(tiny_checkpoint)
    floats, bits = loaded.extract(preprocess_batch(FILES, loaded.pretrained_cfg))
    async with ExtractorClient([extractor_process], timeout=10, retries=0) as client:
        info = await client.info()
        batch = await client.features(FILES, request_id="req-1")
    assert info["id"] == loaded.id and info["feature_dim"] == 20
    assert batch.extractor_id == loaded.id
    assert np.array_equal(batch.bits, bits)
    np.testing.assert_allclose(batch.floats, floats, rtol=1e-5, atol=1e-6)


def test_sync_client_gets_features_and_rejections_from_a_real_process(
    extractor_process: str,
) -> None:
    with ExtractorClient(extractor_process, timeout=10, retries=0) as client:
        assert client.features_sync(FILES).floats.shape == (2, 20)
        with pytest.raises(ExtractorRejectedImage) as info:
            client.features_sync([FILES[0], ("notes.jpg", b"plain text")])
    assert (info.value.filename, info.value.status) == ("notes.jpg", 422)
    assert info.value.reason == "the file is not a readable image"  # not prefixed twice


async def test_failover_to_a_live_replica_then_unavailable_once_it_is_killed(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    replica = start_extractor(tiny_checkpoint, tmp_path)
    try:
        async with ExtractorClient([dead, replica.url], timeout=5, retries=0) as client:
            for _ in range(2):  # whichever replica the round-robin starts with
                assert len(await client.features(FILES[:1])) == 1
            replica.stop()
            with pytest.raises(ExtractorUnavailable) as info:
                await client.features(FILES[:1])
        assert info.value.retry_after >= 1
    finally:
        replica.stop()


# -- fake replicas --------------------------------------------------------------------------------
INFO = {"id": "f" * 64, "feature_dim": 4, "architecture": "fake"}


def wire(floats: list[list[float]], bits: np.ndarray | None = None, ident: str = INFO["id"]):
    f = np.asarray(floats, dtype=np.float32)
    return encode_features(FeatureBatch(ident, f, pack_signs(f) if bits is None else bits))


def fake(
    features: Callable[[httpx.Request], httpx.Response], info: dict = INFO
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/info":
            return httpx.Response(200, json=info)
        return features(request)

    return handler


def ok(body: bytes) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, content=body, headers={"content-type": CONTENT_TYPE})


def client_for(handler, urls=("http://r1",), retries: int = 0) -> ExtractorClient:
    transport = httpx.MockTransport(handler)
    return ExtractorClient(
        list(urls),
        timeout=1,
        retries=retries,
        backoff=0.0,
        transport=transport,
        sync_transport=transport,
    )


GOOD = [[0.5, -1.0, 2.0, -0.25]]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (wire([[0.5, -1.0, 2.0]]), "width 3"),
        (wire([[0.5, math.nan, 2.0, 1.0]]), "non-finite"),
        (wire([[0.5, math.inf, 2.0, 1.0]]), "non-finite"),
        (wire(GOOD, bits=np.array([[0b1111]], dtype=np.uint8)), "disagree"),
        (wire(GOOD, ident="0" * 64), "extractor"),
        (wire(GOOD + GOOD), "2 vectors for 1"),
        (wire(GOOD)[:-3], "malformed"),
        (b'{"features": [[0.5, -1.0, 2.0, -0.25]]}', "malformed"),
    ],
)
async def test_garbage_from_the_extractor_is_a_bad_response(body: bytes, match: str) -> None:
    async with client_for(fake(ok(body))) as client:
        with pytest.raises(ExtractorBadResponse, match=match):
            await client.features([("a.png", b"x")])


async def test_wrong_content_type_is_a_bad_response() -> None:
    handler = fake(lambda r: httpx.Response(200, json={"floats": GOOD}))
    async with client_for(handler) as client:
        with pytest.raises(ExtractorBadResponse, match="content type"):
            await client.features([("a.png", b"x")])


async def test_a_busy_replica_fails_over_to_the_next() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        if request.url.path == "/v1/info":
            return httpx.Response(200, json=INFO)
        if request.url.host == "r1":
            return httpx.Response(503, headers={"Retry-After": "3"})
        return ok(wire(GOOD))(request)

    async with client_for(handler, urls=("http://r1", "http://r2")) as client:
        batch = await client.features([("a.png", b"x")])
    assert batch.floats.tolist() == GOOD
    assert "r1" in calls and "r2" in calls


async def test_all_replicas_busy_is_unavailable_with_their_retry_after() -> None:
    handler = fake(lambda r: httpx.Response(503, headers={"Retry-After": "7"}))
    async with client_for(handler, urls=("http://r1", "http://r2"), retries=2) as client:
        with pytest.raises(ExtractorUnavailable) as info:
            await client.features([("a.png", b"x")])
    assert info.value.retry_after == 7


async def test_retries_recover_from_a_transient_connection_error() -> None:
    attempts = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return ok(wire(GOOD))(request)

    async with client_for(fake(flaky), retries=1) as client:
        assert (await client.features([("a.png", b"x")])).floats.tolist() == GOOD
    assert attempts["n"] == 2


def test_a_slow_extractor_times_out_as_unavailable_in_the_sync_client() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with (
        client_for(fake(slow), retries=1) as client,
        pytest.raises(ExtractorUnavailable, match="ReadTimeout"),
    ):
        client.features_sync([("a.png", b"x")])


def test_rejected_image_keeps_the_extractors_status_and_filename() -> None:
    problem = {
        "status": 415,
        "code": "unsupported_image_format",
        "filename": "d.pdf",
        "detail": "d.pdf: PDF is not an accepted image format",
    }
    handler = fake(lambda r: httpx.Response(415, json=problem))
    with client_for(handler) as client, pytest.raises(ExtractorRejectedImage) as info:
        client.features_sync([("d.pdf", b"%PDF")])
    exc = info.value
    assert (exc.filename, exc.status, exc.code) == ("d.pdf", 415, "unsupported_image_format")


def test_info_without_feature_dim_is_a_bad_response() -> None:
    with (
        client_for(fake(ok(b""), info={"id": "x"})) as client,
        pytest.raises(ExtractorBadResponse, match="feature_dim"),
    ):
        client.info_sync()
