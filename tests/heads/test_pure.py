"""Unit tests of the pure head modules: reference grammar, blob format, scoring, cache, ONNX."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest

from service.heads import evaluate
from service.heads.cache import HeadCache
from service.heads.headfile import HeadFile, HeadFormatError, decode_head, encode_head
from service.heads.onnx_export import head_to_onnx_bytes
from service.heads.refs import HeadRef, InvalidHeadRef, parse_ref, parse_ref_list

PRE = {"input_size": [3, 32, 32], "resize": 36, "mean": [0.5] * 3, "std": [0.5] * 3}


def make_head(head_type: str, d: int = 13, c: int = 4, seed: int = 0) -> HeadFile:
    rng = np.random.default_rng(seed)
    if head_type == "float":
        weights = {
            "weight": rng.normal(size=(c, d)).astype(np.float32),
            "bias": rng.normal(size=c).astype(np.float32),
        }
    elif head_type == "binary":
        weights = {
            "weight_bits": evaluate.pack_signs(rng.normal(size=(c, d))),
            "scale": rng.uniform(0.05, 0.2, size=c).astype(np.float32),
            "bias": rng.normal(size=c).astype(np.float32),
        }
    else:
        weights = {
            "w1": rng.normal(size=(7, d)).astype(np.float32),
            "b1": rng.normal(size=7).astype(np.float32),
            "w2": rng.normal(size=(c, 7)).astype(np.float32),
            "b2": rng.normal(size=c).astype(np.float32),
        }
    labels = [f"l{i}" for i in range(c)]
    return HeadFile(head_type, labels, "ex1", d, PRE, "2025-01-01T00:00:00Z", weights)


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("acme/flowers", HeadRef("acme", "flowers")),
        ("flowers:3", HeadRef(None, "flowers", version=3)),
        ("acme/flowers@staging", HeadRef("acme", "flowers", alias="staging")),
        (" acme/my_head-2 ", HeadRef("acme", "my_head-2")),
    ],
)
def test_parse_ref_accepts_contract_examples(text: str, ref: HeadRef) -> None:
    assert parse_ref(text) == ref
    assert str(parse_ref(text)) == text.strip()


@pytest.mark.parametrize(
    "text",
    ["", "a/b/c", "acme/flowers:0", "acme/flowers:x", "acme/flowers:1@p", "A/b", "x/f@", "/f"],
)
def test_parse_ref_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidHeadRef):
        parse_ref(text)


def test_parse_ref_list_dedupes_and_caps() -> None:
    refs = parse_ref_list("ab/x, ab/x,y:2", max_refs=3)
    assert refs == [HeadRef("ab", "x"), HeadRef(None, "y", 2)]
    with pytest.raises(InvalidHeadRef):
        parse_ref_list("a,b,c", max_refs=2)


@pytest.mark.parametrize("head_type", ["float", "binary", "mlp"])
def test_head_blob_round_trips_with_metadata(head_type: str) -> None:
    head = make_head(head_type)
    back = decode_head(encode_head(head))
    assert (back.head_type, back.labels, back.extractor_id) == (head_type, head.labels, "ex1")
    assert back.preprocessing == PRE and back.feature_dim == 13
    for k, v in head.weights.items():
        np.testing.assert_array_equal(back.weights[k], v)


def test_head_blob_refuses_wrong_shapes_and_foreign_files() -> None:
    head = make_head("float")
    bad = HeadFile(**{**head.__dict__, "labels": ["only-one"]})
    with pytest.raises(HeadFormatError):
        encode_head(bad)
    with pytest.raises(HeadFormatError):
        decode_head(b"not a safetensors file at all")


def test_binary_xor_popcount_equals_sign_dot_product() -> None:
    head = make_head("binary", d=13)
    x = np.random.default_rng(1).normal(size=(5, 13)).astype(np.float32)
    w_sign = np.unpackbits(head.weights["weight_bits"], axis=1, count=13, bitorder="little")
    w_pm = np.where(w_sign == 1, 1.0, -1.0)
    expected = np.where(x >= 0, 1.0, -1.0) @ w_pm.T * head.weights["scale"] + head.weights["bias"]
    got = evaluate.logits(head, None, evaluate.pack_signs(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(evaluate.logits(head, x, None), got)


def test_scores_are_probabilities_and_top_k_sorted() -> None:
    head = make_head("mlp")
    x = np.random.default_rng(2).normal(size=(3, 13)).astype(np.float32)
    probs = evaluate.scores(head, x, None)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    top = evaluate.top_k(probs, head.labels, 2)
    assert [len(r) for r in top] == [2, 2, 2]
    assert all(r[0][1] >= r[1][1] for r in top)
    assert top[0][0][1] == pytest.approx(float(probs[0].max()))


def test_float_head_refuses_packed_bits_and_wrong_width() -> None:
    head = make_head("float")
    with pytest.raises(evaluate.FeatureMismatch):
        evaluate.logits(head, None, np.zeros((1, 2), np.uint8))
    with pytest.raises(evaluate.FeatureMismatch):
        evaluate.logits(head, np.zeros((1, 12), np.float32), None)


def test_cache_evicts_least_recently_used_by_bytes() -> None:
    a, b, c = make_head("float", seed=1), make_head("float", seed=2), make_head("float", seed=3)
    cache = HeadCache(max_bytes=2 * a.nbytes)
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # a is now most recent
    cache.put("c", c)
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.current_bytes == 2 * a.nbytes
    tiny = HeadCache(max_bytes=a.nbytes - 1)
    tiny.put("a", a)
    assert len(tiny) == 0


def test_cache_get_or_load_loads_once() -> None:
    cache, calls = HeadCache(1 << 20), []
    head = make_head("float")

    def load() -> HeadFile:
        calls.append(1)
        return head

    assert cache.get_or_load("k", load) is head
    assert cache.get_or_load("k", load) is head
    assert len(calls) == 1


@pytest.mark.parametrize("head_type", ["float", "binary", "mlp"])
def test_onnx_export_gives_same_scores_in_onnxruntime(head_type: str) -> None:
    head = make_head(head_type, d=13)
    x = np.random.default_rng(3).normal(size=(6, 13)).astype(np.float32)
    x[0, :3] = 0.0  # sign(0) = +1 on both paths
    sess = ort.InferenceSession(head_to_onnx_bytes(head), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["scores"], {"features": x})
    np.testing.assert_allclose(got, evaluate.scores(head, x, None), rtol=1e-4, atol=1e-6)
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["extractor_id"] == "ex1" and meta["labels"].startswith('["l0"')
    assert math.isclose(float(got.sum()), 6.0, rel_tol=1e-4)
