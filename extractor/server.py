"""The extractor process: one frozen network behind HTTP, fed by a dynamic micro-batcher.

`POST /v1/features` takes multipart `files` parts and answers both feature forms in the binary
wire format (`extractor.wire`). Decoding runs in a thread pool, never on the event loop; one
inference thread runs the forward passes. Expected failures are problem+json 4xx/503.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from extractor.batcher import BatcherStopped, MicroBatcher, QueueFull
from extractor.checkpoint import LoadedExtractor, load_checkpoint
from extractor.imaging import DEFAULT_MAX_PIXELS, ImageRejected, preprocess_batch
from extractor.inference import InferencePath, select_path
from extractor.metrics import ExtractorMetrics
from extractor.packing import pack_signs
from extractor.web.limits import BodySizeLimitMiddleware
from extractor.web.problems import problem
from extractor.web.requests import RequestContextMiddleware
from extractor.wire import CONTENT_TYPE, FeatureBatch, encode_features

__all__ = ["create_app"]

log = logging.getLogger("extractor.server")

_MULTIPART_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}


def create_app(
    checkpoint: str | Path | LoadedExtractor,
    reference: bool = False,
    *,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    queue_size: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_body: int = 64 * 1024 * 1024,
    max_files: int = 256,
    threads: int | None = None,
) -> FastAPI:
    """Load the extractor once (frozen) and build the app; the inference thread runs in lifespan."""
    if threads is not None:
        torch.set_num_threads(threads)
    loaded = checkpoint if isinstance(checkpoint, LoadedExtractor) else load_checkpoint(checkpoint)
    loaded.model.eval().requires_grad_(False)
    path: InferencePath = select_path(loaded, reference=reference)
    cfg = loaded.pretrained_cfg
    metrics = ExtractorMetrics()
    batcher = MicroBatcher(
        path.forward,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        on_batch=metrics.observe_batch,
        on_depth=metrics.queue_depth.set,
    )
    info = loaded.info() | {
        "path": path.name,
        **path.details,
        "preprocessing": cfg,
        "provenance": loaded.metadata.get("provenance"),
        "max_batch": max_batch,
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def warm_up() -> None:
            with torch.inference_mode():
                path.forward(torch.zeros(1, *cfg["input_size"]))

        await run_in_threadpool(warm_up)
        batcher.start()
        log.info("ready", extra={"fields": {"extractor_id": loaded.id, "path": path.name}})
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)

    app = FastAPI(title="headhub extractor", version="1", lifespan=lifespan)
    app.state.loaded, app.state.batcher, app.state.metrics = loaded, batcher, metrics
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=max_body,
        on_refused=metrics.rejected.labels(code="body_too_large").inc,
    )
    app.add_middleware(RequestContextMiddleware, observe=metrics.observe_request)

    def refuse(status: int, code: str, title: str, detail: str, **kw: Any) -> JSONResponse:
        metrics.rejected.labels(code=code).inc()
        return problem(status, title, detail, code, **kw)

    def busy(detail: str) -> JSONResponse:
        return refuse(503, "extractor_busy", "Extractor busy", detail, headers={"Retry-After": "1"})

    @app.post(
        "/v1/features",
        response_class=Response,
        openapi_extra=_MULTIPART_SCHEMA,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "wire-format features"}},
    )
    async def features(request: Request) -> Response:
        """Features of every `files` part, in order, as `application/x-headhub-features`."""
        try:
            form = await request.form(max_files=max_files, max_fields=max_files)
        except HTTPException as exc:
            return refuse(400, "invalid_multipart", "Bad multipart body", str(exc.detail))
        try:
            parts = list(form.multi_items())
            uploads = [v for k, v in parts if k == "files" and isinstance(v, UploadFile)]
            if len(uploads) != len(parts) or not uploads:
                return refuse(
                    422,
                    "invalid_files",
                    "Invalid files",
                    "send one or more multipart `files` parts",
                )
            files = [(u.filename or f"file{i}", await u.read()) for i, u in enumerate(uploads)]
        finally:
            await form.close()
        if batcher.depth + len(files) > batcher.capacity:  # shed load before decoding
            return busy(f"inference queue is full ({batcher.depth}/{batcher.capacity})")
        try:
            x = await run_in_threadpool(preprocess_batch, files, cfg, max_pixels=max_pixels)
        except ImageRejected as exc:
            title = {413: "Image too large", 415: "Unsupported image format"}.get(
                exc.status, "Invalid image"
            )
            detail = f"{exc.filename}: {exc.reason}"
            return refuse(
                exc.status, exc.code, title, detail, filename=exc.filename, reason=exc.reason
            )
        try:
            floats = await batcher.submit(x)
        except QueueFull as exc:
            return busy(str(exc))
        except BatcherStopped as exc:
            return busy(str(exc))
        body = encode_features(FeatureBatch(loaded.id, floats, pack_signs(floats)))
        return Response(body, media_type=CONTENT_TYPE, headers={"X-Extractor-Id": loaded.id})

    @app.get("/v1/info")
    async def get_info() -> dict[str, Any]:
        """The extractor's identity, shape and size (`GET /v1/extractor` in the public API)."""
        return info

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz() -> dict[str, str] | JSONResponse:
        """Readiness: the network is loaded and the inference thread accepts work."""
        if not batcher.running:
            return problem(503, "Not ready", "the inference thread is not running", "not_ready")
        return {"status": "ready", "extractor_id": loaded.id}

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
