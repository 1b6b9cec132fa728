"""`POST /v1/predict/features`: reference resolution, scores, packed bits, mismatches, metering."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from extractor.packing import pack_signs
from tests.heads.helpers import add_version

EXTRACTOR = "e" * 64
D = 20


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def post(client, headers, heads: list[str], features: list[Any], **extra: Any) -> Any:
    body = {"extractor_id": EXTRACTOR, "heads": heads, "features": features, **extra}
    return client.post("/v1/predict/features", json=body, headers=headers)


@pytest.fixture(scope="module")
def acme(client, app):  # type: ignore[no-untyped-def]
    from tests.conftest import create_tenant

    t = create_tenant(client, "acme")
    versions = [add_version(app, t.id, "flowers", seed=s)[1] for s in (1, 2, 3)]
    binary = add_version(app, t.id, "bits", head_type="binary", labels=list("abcde"), seed=4)[1]
    return t, versions, binary


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(3, D)).astype(np.float32)


def predicted_refs(r: Any) -> list[str]:
    assert r.status_code == 200, r.text
    return list(r.json()["results"][0]["predictions"])


def test_reference_resolution(client, acme, x) -> None:
    t, _, _ = acme
    h, rows = t.predict_headers, x.tolist()
    assert predicted_refs(post(client, h, ["flowers"], rows)) == [f"{t.name}/flowers:3"]
    assert predicted_refs(post(client, h, [f"{t.name}/flowers:1"], rows)) == [f"{t.name}/flowers:1"]
    r = client.put(
        f"/v1/heads/{t.name}/flowers/aliases/production",
        json={"version": 2},
        headers=t.owner_headers,
    )
    assert r.status_code == 200
    try:
        assert predicted_refs(post(client, h, ["flowers"], rows)) == [f"{t.name}/flowers:2"]
        client.put(
            f"/v1/heads/{t.name}/flowers/aliases/canary",
            json={"version": 1},
            headers=t.owner_headers,
        )
        refs = predicted_refs(post(client, h, ["flowers@canary", "flowers", "flowers:2"], rows))
        assert refs == [f"{t.name}/flowers:1", f"{t.name}/flowers:2"]  # duplicates collapse
    finally:
        client.delete(f"/v1/heads/{t.name}/flowers/aliases/production", headers=t.owner_headers)


@pytest.mark.parametrize(
    ("ref", "status", "code"),
    [
        ("flowers:9", 404, "head_version_not_found"),
        ("flowers@nope", 404, "head_alias_not_found"),
        ("nothing", 404, "head_not_found"),
        ("no-one/flowers", 404, "head_not_found"),
        ("flowers:x", 422, "invalid_head_ref"),
        ("a/b/c", 422, "invalid_head_ref"),
    ],
)
def test_bad_references_are_4xx(client, acme, x, ref: str, status: int, code: str) -> None:
    r = post(client, acme[0].predict_headers, ["flowers", ref], x.tolist())
    assert r.status_code == status and r.json()["code"] == code


def test_float_scores_are_softmax_of_the_known_weights(client, acme, x) -> None:
    t, versions, _ = acme
    r = post(client, t.predict_headers, ["flowers:1"], x.tolist(), top_k=3)
    w, b = versions[0]["weight"].numpy(), versions[0]["bias"].numpy()
    expected = softmax(x.astype(np.float64) @ w.T + b)
    body = r.json()
    assert body["extractor_id"] == EXTRACTOR
    for i, result in enumerate(body["results"]):
        assert result["filename"] == f"features[{i}]"
        preds = result["predictions"][f"{t.name}/flowers:1"]
        order = np.argsort(-expected[i])
        assert [p["label"] for p in preds] == [["cat", "dog", "bird"][j] for j in order]
        np.testing.assert_allclose([p["score"] for p in preds], expected[i][order], rtol=1e-5)


def test_base64_bits_equal_float_features_for_binary_heads(client, acme, x) -> None:
    t, _, weights = acme
    bits = [base64.b64encode(row.tobytes()).decode() for row in pack_signs(x)]
    by_floats = post(client, t.predict_headers, ["bits"], x.tolist(), top_k=5).json()
    by_bits = post(client, t.predict_headers, ["bits"], bits, top_k=5).json()
    assert by_floats["results"] == by_bits["results"]
    # Independent check: scale * (sign(x) . sign(w)) + bias.
    w_sign = np.unpackbits(weights["weight_bits"].numpy(), axis=1, count=D, bitorder="little")
    dots = np.where(x >= 0, 1.0, -1.0) @ np.where(w_sign == 1, 1.0, -1.0).T
    expected = softmax(dots * weights["scale"].numpy() + weights["bias"].numpy())
    top = by_bits["results"][0]["predictions"][f"{t.name}/bits:1"][0]
    assert top["label"] == "abcde"[int(expected[0].argmax())]
    assert top["score"] == pytest.approx(float(expected[0].max()), rel=1e-5)


def test_mismatches_are_409_or_422(client, acme, x) -> None:
    t, _, _ = acme
    h = t.predict_headers
    r = client.post(
        "/v1/predict/features",
        json={"extractor_id": "f" * 64, "heads": ["flowers"], "features": x.tolist()},
        headers=h,
    )
    assert r.status_code == 409 and r.json()["code"] == "extractor_mismatch"
    r = post(client, h, ["flowers"], [[0.0] * (D + 1)])
    assert r.status_code == 409 and r.json()["code"] == "extractor_mismatch"
    r = post(client, h, ["bits"], [base64.b64encode(b"\0" * 5).decode()])
    assert r.status_code == 409 and r.json()["code"] == "extractor_mismatch"
    r = post(client, h, ["flowers"], [base64.b64encode(b"\0" * 3).decode()])
    assert r.status_code == 422 and r.json()["code"] == "float_features_required"
    r = post(client, h, ["bits"], ["not base64!"])
    assert r.status_code == 422 and r.json()["code"] == "invalid_features"
    r = post(client, h, ["flowers"], [[0.0] * D, [0.0] * (D - 1)])
    assert r.status_code == 422
    r = post(client, h, ["flowers"], x.tolist(), owner="x")
    assert r.status_code == 422  # extra fields are refused


def test_top_k_bounds(client, acme, x) -> None:
    t, _, _ = acme
    r = post(client, t.predict_headers, ["flowers"], x.tolist(), top_k=1)
    assert len(r.json()["results"][0]["predictions"][f"{t.name}/flowers:3"]) == 1
    r = post(client, t.predict_headers, ["flowers"], x.tolist(), top_k=50)
    assert len(r.json()["results"][0]["predictions"][f"{t.name}/flowers:3"]) == 3
    assert post(client, t.predict_headers, ["flowers"], x.tolist(), top_k=0).status_code == 422


def test_usage_is_metered_per_image(client, acme, x) -> None:
    t, _, _ = acme

    def usage() -> int:
        r = client.get(f"/v1/heads/{t.name}/bits", headers=t.owner_headers)
        return int(r.json()["usage_count"])

    before = usage()
    assert post(client, t.predict_headers, ["bits"], x.tolist()).status_code == 200
    assert usage() == before + len(x)
    assert post(client, t.predict_headers, ["bits:9"], x.tolist()).status_code == 404
    assert usage() == before + len(x)


def test_non_finite_features_are_422(client, acme) -> None:
    row = [0.0] * D
    body = json.dumps({"extractor_id": EXTRACTOR, "heads": ["flowers"], "features": [row]})
    body = body.replace("[[0.0,", "[[NaN,", 1)  # JSON has no NaN; Python's parser accepts it
    r = client.post(
        "/v1/predict/features",
        content=body,
        headers={**acme[0].predict_headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and r.json()["code"] in {"invalid_features", "validation_error"}


def test_heads_are_cached_within_the_byte_bound_and_reload_cold(client, app, acme, x) -> None:
    t = acme[0]
    assert post(client, t.predict_headers, ["flowers:1", "bits"], x.tolist()).status_code == 200
    cache = app.state.head_cache
    assert len(cache) >= 2 and cache.current_bytes <= app.state.settings.head_cache_bytes
    warm = post(client, t.predict_headers, ["flowers:1"], x.tolist()).json()
    for key in list(cache._items):
        cache.discard(key)
    assert len(cache) == 0
    cold = post(client, t.predict_headers, ["flowers:1"], x.tolist()).json()  # from the blob store
    assert cold == warm and len(cache) == 1
