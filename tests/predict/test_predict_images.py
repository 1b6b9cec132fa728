"""`POST /v1/predict` end to end through a real `headhub extractor serve` process."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import numpy as np
import pytest

from extractor.checkpoint import load_checkpoint
from extractor.client import ExtractorClient
from tests.conftest import create_tenant, make_settings
from tests.datasets.makers import noise_png
from tests.heads.helpers import add_version


@pytest.fixture(scope="module")
def settings(db_url, tmp_path_factory, extractor_process):  # type: ignore[no-untyped-def]
    """This module's app talks to the real extractor process."""
    return make_settings(
        tmp_path_factory.mktemp("data"), db_url, extractor_urls=[extractor_process]
    )


IMAGES = [("red.png", noise_png(1)), ("noise.png", noise_png(2)), ("other.png", noise_png(3))]


def images_computed(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^extractor_images_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def world(client, app, extractor_process, tiny_checkpoint) -> dict[str, Any]:
    info = httpx.get(f"{extractor_process}/v1/info").json()
    cfg = load_checkpoint(tiny_checkpoint).pretrained_cfg
    t = create_tenant(client, "img")
    d = info["feature_dim"]
    kw = {"extractor_id": info["id"], "d": d, "preprocessing": cfg}
    floats = add_version(app, t.id, "colours", head_type="float", seed=1, **kw)[1]
    bits = add_version(app, t.id, "shapes", head_type="binary", labels=list("pqrs"), seed=2, **kw)[
        1
    ]
    add_version(app, t.id, "stale", seed=3, d=d, extractor_id="0" * 64)
    return {"t": t, "info": info, "float_w": floats, "binary_w": bits}


def predict(client, headers, heads: str, files=IMAGES, top_k: int = 5) -> Any:
    parts = [("files", (name, data, "image/png")) for name, data in files]
    return client.post(
        "/v1/predict", params={"heads": heads, "top_k": top_k}, files=parts, headers=headers
    )


def test_predict_scores_every_image_with_every_head_in_one_pass(
    client, world, extractor_process
) -> None:
    t = world["t"]
    before = images_computed(extractor_process)
    r = predict(client, t.predict_headers, f"colours,{t.name}/shapes:1")
    assert r.status_code == 200, r.text
    assert images_computed(extractor_process) - before == len(IMAGES)  # once, not once per head
    body = r.json()
    assert body["extractor_id"] == world["info"]["id"]
    assert [x["filename"] for x in body["results"]] == [n for n, _ in IMAGES]
    for result in body["results"]:
        preds = result["predictions"]
        assert set(preds) == {f"{t.name}/colours:1", f"{t.name}/shapes:1"}
        assert {p["label"] for p in preds[f"{t.name}/shapes:1"]} == set("pqrs")
        assert sum(p["score"] for p in preds[f"{t.name}/colours:1"]) == pytest.approx(1.0, 1e-5)


def test_feature_input_gives_the_same_answer_as_images(client, world, extractor_process) -> None:
    t = world["t"]
    by_images = predict(client, t.predict_headers, "colours,shapes").json()["results"]
    with ExtractorClient([extractor_process], timeout=10.0) as ext:
        batch = ext.features_sync(IMAGES)
    common = {"extractor_id": batch.extractor_id, "top_k": 5}
    by_floats = client.post(
        "/v1/predict/features",
        json={**common, "heads": ["colours", "shapes"], "features": batch.floats.tolist()},
        headers=t.predict_headers,
    ).json()["results"]
    bits = [base64.b64encode(row.tobytes()).decode() for row in batch.bits]
    by_bits = client.post(
        "/v1/predict/features",
        json={**common, "heads": ["shapes"], "features": bits},
        headers=t.predict_headers,
    ).json()["results"]
    for img, fl, bi in zip(by_images, by_floats, by_bits, strict=True):
        for ref, preds in fl["predictions"].items():
            got = img["predictions"][ref]
            assert [p["label"] for p in got] == [p["label"] for p in preds]
            np.testing.assert_allclose(
                [p["score"] for p in got], [p["score"] for p in preds], rtol=1e-4
            )
        assert bi["predictions"] == {
            k: v for k, v in fl["predictions"].items() if k.endswith("/shapes:1")
        }


def test_head_of_another_extractor_is_409(client, world) -> None:
    r = predict(client, world["t"].predict_headers, "colours,stale")
    assert r.status_code == 409 and r.json()["code"] == "extractor_mismatch"
    assert "stale" in r.json()["detail"]


def test_bad_reference_fails_before_the_extractor_is_called(
    client, world, extractor_process
) -> None:
    before = images_computed(extractor_process)
    r = predict(client, world["t"].predict_headers, "colours,missing")
    assert r.status_code == 404 and r.json()["code"] == "head_not_found"
    assert images_computed(extractor_process) == before


def test_rejected_image_is_a_4xx_naming_the_file(client, world) -> None:
    files = [IMAGES[0], ("notes.png", b"this is not an image at all")]
    r = predict(client, world["t"].predict_headers, "colours", files=files)
    assert 400 <= r.status_code < 500 and r.status_code != 404, r.text
    assert "notes.png" in r.json()["detail"]
    assert r.headers["content-type"].startswith("application/problem+json")
