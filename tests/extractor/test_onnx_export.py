"""The extractor as ONNX for devices: onnxruntime gives the service's sign bits on real photos."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
from PIL import Image

from extractor.checkpoint import DEFAULT_CHECKPOINT, checkpoint_id, load_checkpoint
from extractor.imaging import preprocess_batch
from extractor.onnx_export import checkpoint_to_onnx_bytes
from extractor.server import create_app
from extractor.wire import FeatureBatch, decode_features

# scikit-image's sample photographs (bundled, offline): people, animals, objects, text, space.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "hubble_deep_field",
          "immunohistochemistry", "retina", "horse", "page", "coins")  # fmt: skip


def photos() -> list[tuple[str, bytes]]:
    files = []
    for name in PHOTOS:
        img = Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, "PNG")
        files.append((f"{name}.png", buf.getvalue()))
    return files


async def served_features(
    checkpoint: Path, files: list[tuple[str, bytes]]
) -> tuple[FeatureBatch, str]:
    """The features the extractor process answers (its default path: the fast kernels where
    they are compiled), through its HTTP app."""
    app = create_app(checkpoint, max_wait_ms=1)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            r = await client.post(
                "/v1/features", files=[("files", (n, d, "image/png")) for n, d in files]
            )
            assert r.status_code == 200, r.text
            return decode_features(r.content), app.state.catalog.default.path.name


def onnx_features(graph: bytes, checkpoint: Path, files: list[tuple[str, bytes]]) -> np.ndarray:
    cfg = load_checkpoint(checkpoint).pretrained_cfg
    x = preprocess_batch(files, cfg).numpy()
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    return session.run(["features"], {"images": x})[0]


@pytest.mark.parametrize("which", ["shipped", "tiny"])
async def test_onnxruntime_gives_the_services_sign_bits_on_real_photos(
    which: str, tiny_checkpoint: Path
) -> None:
    checkpoint = DEFAULT_CHECKPOINT if which == "shipped" else tiny_checkpoint
    data = checkpoint.read_bytes()
    graph = checkpoint_to_onnx_bytes(data)
    files = photos()
    served, path = await served_features(checkpoint, files)
    got = onnx_features(graph, checkpoint, files)
    assert got.shape == served.floats.shape
    bits = np.packbits((got >= 0).astype(np.uint8), axis=1, bitorder="little")
    assert np.array_equal(bits, served.bits), f"sign bits differ from the {path} path"
    np.testing.assert_allclose(got, served.floats, rtol=1e-4, atol=1e-4)
    model = onnx.load_from_string(graph)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["extractor_id"] == checkpoint_id(data) == served.extractor_id
    assert json.loads(props["preprocessing"]) == load_checkpoint(checkpoint).pretrained_cfg


def test_binary_layers_are_sign_and_float_ops_with_weights_stored_one_bit_each() -> None:
    data = DEFAULT_CHECKPOINT.read_bytes()
    model = onnx.load_from_string(checkpoint_to_onnx_bytes(data))
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "GreaterOrEqual", "Where", "BitShift", "Mod"} <= ops
    assert not ops & {"QLinearConv", "ConvInteger"}  # plain float ops only
    floats = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert all(not np.isin(onnx.numpy_helper.to_array(i), (-1.0, 1.0)).all()
               for i in floats if len(i.dims) and np.prod(i.dims) >= 64)  # fmt: skip
    packed = sum(int(p.value) for p in model.metadata_props if p.key == "binary_weights_packed")
    assert packed == load_checkpoint(DEFAULT_CHECKPOINT).metadata["parameters"]["binary"]
    assert model.ByteSize() < 1.1 * len(data)  # about the checkpoint's size, not 16x it
