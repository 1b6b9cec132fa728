"""The extractor as an ONNX graph for devices: images in, the service's features out.

The folded inference network (`load_checkpoint`) is traced with its binary layers as plain ops:
the sign as `Where(x + threshold >= 0, 1, -1)`, the binary convolutions as float `Conv` over ±1
weights, the folded scale and bias as `Mul`/`Add`; real layers as they are. Every ±1 weight is
stored packed, one bit each (numpy packbits, little bit order, as in the checkpoint), and
unpacked by a constant subgraph (`BitShift`, `Mod`, `Cast`, `x * 2 - 1`) that a runtime folds
once when it loads the model, so the file is about the checkpoint's size instead of 16 times it.

On ±1 inputs and weights a binary convolution sums exact small integers in float32, so a runtime
computes the same sign bits as the service (tests/extractor/test_onnx_export.py checks it in
onnxruntime on real photographs).
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from extractor.checkpoint import LoadedExtractor, load_checkpoint

__all__ = ["EXPORT_VERSION", "checkpoint_to_onnx_bytes", "extractor_to_onnx"]

EXPORT_VERSION = 1  # part of the cache key of an exported file: bump when the graph changes
OPSET = 17
IR_VERSION = 8  # read by every current onnxruntime
_MIN_PACKED = 64  # smaller ±1 tensors stay float: packing them saves nothing


class _Features(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)  # type: ignore[operator, no-any-return]


def _trace(loaded: LoadedExtractor) -> onnx.ModelProto:
    x = torch.zeros(1, *loaded.pretrained_cfg["input_size"])
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, not gone
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Features(loaded.model).eval(),
            (x,),
            buf,  # type: ignore[arg-type]  # a binary stream works as well as a path
            dynamo=False,
            input_names=["images"],
            output_names=["features"],
            opset_version=OPSET,
            dynamic_axes={"images": {0: "N"}, "features": {0: "N"}},
        )
    return onnx.load_from_string(buf.getvalue())


def _pack_sign_weights(model: onnx.ModelProto) -> int:
    """Replace every ±1 float initializer by packed bits and an unpacking subgraph; returns how
    many weights were packed."""
    graph = model.graph
    packed_total = 0
    shifts_name, two_name = "unpack_shifts", "unpack_two"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.arange(8, dtype=np.uint8).reshape(1, 8), shifts_name),
            numpy_helper.from_array(np.array(2, dtype=np.uint8), two_name),
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "unpack_twof"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "unpack_one"),
        ]
    )
    keep, nodes = [], []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            keep.append(init)
            continue
        w = numpy_helper.to_array(init)
        if w.size < _MIN_PACKED or not np.isin(w, (-1.0, 1.0)).all():
            keep.append(init)
            continue
        name = init.name
        bits = np.packbits((w.reshape(-1) >= 0).astype(np.uint8), bitorder="little")
        p = f"{name}__packed"
        keep += [
            numpy_helper.from_array(bits.reshape(-1, 1), p),
            numpy_helper.from_array(np.array(w.shape, dtype=np.int64), f"{p}_shape"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{p}_flat"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), f"{p}_span_start"),
            numpy_helper.from_array(np.array([w.size], dtype=np.int64), f"{p}_span_end"),
        ]
        nodes += [
            helper.make_node("BitShift", [p, shifts_name], [f"{p}_sh"], direction="RIGHT"),
            helper.make_node("Mod", [f"{p}_sh", two_name], [f"{p}_bit"]),  # (K/8, 8) of 0/1
            helper.make_node("Reshape", [f"{p}_bit", f"{p}_flat"], [f"{p}_flatbits"]),
            helper.make_node(  # drop the padding bits of the last byte
                "Slice", [f"{p}_flatbits", f"{p}_span_start", f"{p}_span_end"], [f"{p}_bits"]
            ),
            helper.make_node("Cast", [f"{p}_bits"], [f"{p}_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}_f", "unpack_twof"], [f"{p}_2x"]),
            helper.make_node("Sub", [f"{p}_2x", "unpack_one"], [f"{p}_pm"]),  # 0/1 -> -1/+1
            helper.make_node("Reshape", [f"{p}_pm", f"{p}_shape"], [name]),
        ]
        packed_total += int(w.size)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)  # unpacking first: the graph stays topologically sorted
    return packed_total


def extractor_to_onnx(loaded: LoadedExtractor) -> onnx.ModelProto:
    """The ONNX model of a loaded extractor, with its id and preprocessing in the metadata."""
    model = _trace(loaded)
    packed = _pack_sign_weights(model)
    model.ir_version = IR_VERSION
    model.producer_name = "headhub"
    helper.set_model_props(
        model,
        {
            "extractor_id": loaded.id,
            "architecture": loaded.arch,
            "feature_dim": str(loaded.feature_dim),
            "preprocessing": json.dumps(loaded.pretrained_cfg, sort_keys=True),
            "binary_weights_packed": str(packed),
            "export_version": str(EXPORT_VERSION),
            "features": "float32 (N, feature_dim); sign bits: x >= 0, numpy packbits little",
        },
    )
    onnx.checker.check_model(model)
    return model


def checkpoint_to_onnx_bytes(data: bytes, **_: Any) -> bytes:
    """ONNX bytes of a checkpoint file's bytes (loaded fresh: tracing never touches a network
    that serves)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "extractor.safetensors"
        path.write_bytes(data)
        loaded = load_checkpoint(path)
    return bytes(extractor_to_onnx(loaded).SerializeToString())
