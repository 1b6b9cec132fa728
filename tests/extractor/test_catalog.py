"""One extractor process serving several checkpoints: the default plus `<id>.safetensors` files."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from extractor.checkpoint import load_checkpoint
from extractor.client import ExtractorClient, ExtractorNotServed
from extractor.server import create_app
from extractor.wire import decode_features
from tests.extractor.test_server import IMAGES, expected, post, serve
from tests.fixtures.extractor import make_tiny_checkpoint


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny network (other seed, so other weights and another id)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("second") / "second.safetensors", seed=1)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def directory(tmp_path: Path, second: Path) -> Path:
    d = tmp_path / "extractors"
    d.mkdir()
    shutil.copy(second, d / f"{sha(second)}.safetensors")
    shutil.copy(second, d / f"{'0' * 64}.safetensors")  # named after an id it does not have
    return d


@pytest.fixture
async def client(tiny_checkpoint: Path, directory: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(tiny_checkpoint, reference=True, max_wait_ms=1, checkpoint_dir=directory)
    async for c in serve(app):
        c.app = app  # type: ignore[attr-defined]
        yield c


async def test_each_served_network_answers_with_its_own_features(
    client, tiny_checkpoint, second
) -> None:
    default = load_checkpoint(tiny_checkpoint)
    other = load_checkpoint(second)
    r_default = await post(client, IMAGES[:3])
    r_other = await post(client, IMAGES[:3], params={"extractor": other.id})
    assert r_default.status_code == r_other.status_code == 200, r_other.text
    got_default, got_other = decode_features(r_default.content), decode_features(r_other.content)
    assert (got_default.extractor_id, got_other.extractor_id) == (default.id, other.id)
    assert r_other.headers["x-extractor-id"] == other.id
    for got, loaded in ((got_default, default), (got_other, other)):
        floats, bits = expected(loaded, IMAGES[:3])
        assert np.array_equal(got.bits, bits)
        np.testing.assert_allclose(got.floats, floats, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(got_default.bits, got_other.bits)  # really two networks


async def test_info_lists_every_network_and_the_refused_file(client, tiny_checkpoint, second):
    info = (await client.get("/v1/info")).json()
    assert info["id"] == sha(tiny_checkpoint)
    assert info["extractors"] == [sha(tiny_checkpoint), sha(second)]
    listing = (await client.get("/v1/extractors")).json()
    assert [x["id"] for x in listing["items"]] == [sha(tiny_checkpoint), sha(second)]
    assert listing["default"] == sha(tiny_checkpoint)
    [refused] = listing["refused"]
    assert refused["file"] == f"{'0' * 64}.safetensors" and sha(second) in refused["reason"]
    one = (await client.get(f"/v1/extractors/{sha(second)}")).json()
    assert one["id"] == sha(second) and one["feature_dim"] == 20


async def test_unknown_id_is_404_and_a_misnamed_file_is_409(client) -> None:
    r = await post(client, IMAGES[:1], params={"extractor": "a" * 64})
    assert (r.status_code, r.json()["code"]) == (404, "extractor_not_served")
    r = await post(client, IMAGES[:1], params={"extractor": "0" * 64})
    assert (r.status_code, r.json()["code"]) == (409, "checkpoint_id_mismatch")
    r = await client.get(f"/v1/extractors/{'0' * 64}/checkpoint")
    assert r.status_code == 409


async def test_checkpoint_download_is_the_file_whose_sha256_is_the_id(client, second) -> None:
    r = await client.get(f"/v1/extractors/{sha(second)}/checkpoint")
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == sha(second)
    assert r.content == second.read_bytes()


async def test_a_file_copied_in_later_is_served_without_a_restart(
    client, directory, tmp_path
) -> None:
    third = make_tiny_checkpoint(tmp_path / "third.safetensors", seed=2)
    ident = sha(third)
    r = await post(client, IMAGES[:2], params={"extractor": ident})
    assert r.status_code == 404
    shutil.copy(third, directory / f"{ident}.safetensors")
    r = await post(client, IMAGES[:2], params={"extractor": ident})
    assert r.status_code == 200, r.text
    assert decode_features(r.content).extractor_id == ident
    assert (await client.get("/readyz")).status_code == 200


async def test_client_asks_for_an_extractor_and_fails_over_to_a_replica_that_serves_it(
    client, tiny_checkpoint, second
) -> None:
    lone = create_app(tiny_checkpoint, reference=True, max_wait_ms=1)  # no directory
    app: FastAPI = client.app  # type: ignore[attr-defined]
    routes = {"http://lone": lone, "http://full": app}

    async def handler(request: httpx.Request) -> httpx.Response:
        target = routes[f"{request.url.scheme}://{request.url.host}"]
        transport = httpx.ASGITransport(app=target)
        return await transport.handle_async_request(request)

    async with lone.router.lifespan_context(lone):
        ext = ExtractorClient(
            ["http://lone", "http://full"], retries=0, transport=httpx.MockTransport(handler)
        )
        for _ in range(2):  # whichever replica the round-robin starts with
            batch = await ext.features(IMAGES[:2], extractor_id=sha(second))
            assert batch.extractor_id == sha(second)
        info = await ext.info(extractor_id=sha(second))
        assert info["id"] == sha(second)
        with pytest.raises(ExtractorNotServed) as err:
            await ext.features(IMAGES[:1], extractor_id="b" * 64)
        assert not err.value.mismatch
        with pytest.raises(ExtractorNotServed) as err:
            await ext.checkpoint("0" * 64)
        assert err.value.mismatch
        await ext.aclose()
