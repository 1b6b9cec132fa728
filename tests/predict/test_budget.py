"""The API's own budget on `POST /v1/predict` (docs/threats.md, "Extractor work"): bytes per
image (`HEADHUB_MAX_IMAGE_BYTES`) and declared pixels per request (`HEADHUB_MAX_REQUEST_PIXELS`)
are checked from the files' headers before the extractor is asked for anything: a refusal is a
413 problem+json with its `code`, and the extractor is never called."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from extractor.packing import pack_signs
from extractor.wire import FeatureBatch
from service.deps import get_extractor
from service.settings import Settings
from tests.conftest import create_tenant, make_settings
from tests.datasets.makers import noise_png
from tests.heads.helpers import add_version

EXTRACTOR_ID = "c" * 64
D = 20
MAX_REQUEST_PIXELS = 10_000  # four 48 x 48 images (9216 px) fit, five do not
MAX_IMAGE_BYTES = 10_000  # a 48 x 48 noise PNG (~7 KB) fits, a 64 x 64 one (~12 KB) does not


class CountingExtractor:
    """Stands in for `ExtractorClient.features`: counts the calls and the images they carry."""

    def __init__(self) -> None:
        self.calls = 0
        self.images = 0

    async def features(
        self, files: list[tuple[str, bytes]], *, request_id: str, extractor_id: str
    ) -> FeatureBatch:
        self.calls += 1
        self.images += len(files)
        floats = np.random.default_rng(len(files)).normal(size=(len(files), D)).astype(np.float32)
        return FeatureBatch(extractor_id, floats, pack_signs(floats))


@pytest.fixture(scope="module")
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(
        tmp_path_factory.mktemp("data"),
        db_url,
        max_request_pixels=MAX_REQUEST_PIXELS,
        max_image_bytes=MAX_IMAGE_BYTES,
        rate_limit_per_minute=0,
    )


@pytest.fixture
def extractor(app: Any) -> Iterator[CountingExtractor]:
    fake = CountingExtractor()
    app.dependency_overrides[get_extractor] = lambda: fake
    yield fake
    app.dependency_overrides.pop(get_extractor, None)


@pytest.fixture(scope="module")
def headers(client: TestClient, app: Any) -> dict[str, str]:
    t = create_tenant(client, "budget")
    add_version(app, t.id, "h", extractor_id=EXTRACTOR_ID, d=D)
    return t.predict_headers


def flat_png(side: int) -> bytes:
    """A side x side PNG of one colour: many pixels in a few hundred bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def predict(client: TestClient, headers: dict[str, str], files: list[tuple[str, bytes]]) -> Any:
    parts = [("files", (name, data, "image/png")) for name, data in files]
    return client.post("/v1/predict", params={"heads": "h"}, files=parts, headers=headers)


def assert_refused(r: Any, code: str) -> None:
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code, r.text


def test_a_request_within_the_budget_reaches_the_extractor(
    client: TestClient, headers: dict[str, str], extractor: CountingExtractor
) -> None:
    """The fake is the one the endpoint calls: the refusals below are the API's own."""
    files = [(f"{i}.png", noise_png(i)) for i in range(4)]
    assert all(len(data) <= MAX_IMAGE_BYTES for _, data in files)
    r = predict(client, headers, files)
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 4
    assert (extractor.calls, extractor.images) == (1, 4)


def test_an_image_over_the_byte_limit_is_refused_before_the_extractor(
    client: TestClient, headers: dict[str, str], extractor: CountingExtractor
) -> None:
    big = noise_png(7, size=64)  # 4096 px: within the pixel budget, over the byte limit
    assert len(big) > MAX_IMAGE_BYTES
    r = predict(client, headers, [("small.png", noise_png(1)), ("big.png", big)])
    assert_refused(r, "image_bytes_too_large")
    assert "big.png" in r.json()["detail"]
    assert extractor.calls == 0


@pytest.mark.parametrize(
    "files",
    [
        # one image of few bytes declaring more pixels than the whole request may have
        [("wide.png", flat_png(120))],
        # five images each within every limit, together over the budget (checked off the loop)
        [(f"{i}.png", noise_png(10 + i)) for i in range(5)],
    ],
    ids=["one-image", "five-images"],
)
def test_a_request_over_its_pixel_budget_is_refused_before_the_extractor(
    client: TestClient,
    headers: dict[str, str],
    extractor: CountingExtractor,
    files: list[tuple[str, bytes]],
) -> None:
    assert all(len(data) <= MAX_IMAGE_BYTES for _, data in files)
    r = predict(client, headers, files)
    assert_refused(r, "request_pixels_exceeded")
    assert extractor.calls == 0
