"""Export a head as a standalone ONNX graph: float features (N, D) in, softmax scores (N, C) out.

An app runs its on-device extractor, feeds the pooled features here and gets the same scores as
``POST /v1/predict``. A binary head becomes ``sign(x) @ sign(W).T`` as a ±1 float matmul, which
equals ``D - 2 * popcount(x_bits XOR w_bits)`` (headfile.py); the graph stays portable rather than
relying on bit operators that runtimes implement unevenly.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.heads.headfile import HeadFile

OPSET = 17
# onnxruntime rejects models newer than the IR versions it knows; 8 is read by every current one.
IR_VERSION = 8


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name=name)


def head_to_onnx(head: HeadFile, *, name: str = "head") -> onnx.ModelProto:
    """The graph for any head type; ``metadata_props`` carry labels, extractor, preprocessing."""
    w = head.weights
    d = head.feature_dim
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    if head.head_type == "float":
        inits += [_init("weight", w["weight"]), _init("bias", w["bias"])]
        nodes.append(helper.make_node("Gemm", ["features", "weight", "bias"], ["logits"], transB=1))
    elif head.head_type == "binary":
        bits = np.unpackbits(w["weight_bits"], axis=1, count=d, bitorder="little")
        w_pm = np.where(bits == 1, 1.0, -1.0).astype(np.float32)  # (C, D) ±1
        inits += [
            _init("zero", np.array(0.0, np.float32)),
            _init("plus_one", np.array(1.0, np.float32)),
            _init("minus_one", np.array(-1.0, np.float32)),
            _init("weight_sign", w_pm),
            _init("scale", w["scale"]),
            _init("bias", w["bias"]),
        ]
        nodes += [
            helper.make_node("GreaterOrEqual", ["features", "zero"], ["nonneg"]),
            helper.make_node("Where", ["nonneg", "plus_one", "minus_one"], ["x_sign"]),
            helper.make_node("Gemm", ["x_sign", "weight_sign"], ["dots"], transB=1),
            helper.make_node("Mul", ["dots", "scale"], ["scaled"]),
            helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        ]
    elif head.head_type == "mlp":
        inits += [_init(k, w[k]) for k in ("w1", "b1", "w2", "b2")]
        nodes += [
            helper.make_node("Gemm", ["features", "w1", "b1"], ["pre"], transB=1),
            helper.make_node("Relu", ["pre"], ["hidden"]),
            helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"], transB=1),
        ]
    else:
        raise ValueError(f"unknown head type {head.head_type!r}")
    nodes.append(helper.make_node("Softmax", ["logits"], ["scores"], axis=1))
    c = len(head.labels)
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", c])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="headhub"
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            "labels": json.dumps(head.labels),
            "extractor_id": head.extractor_id,
            "preprocessing": json.dumps(head.preprocessing, sort_keys=True),
            "head_type": head.head_type,
            "feature_dim": str(d),
            "created_at": head.created_at,
        },
    )
    onnx.checker.check_model(model)
    return model


def head_to_onnx_bytes(head: HeadFile, *, name: str = "head") -> bytes:
    return head_to_onnx(head, name=name).SerializeToString()
