"""The extractor process: frozen networks behind HTTP, each fed by its own dynamic micro-batcher.

`POST /v1/features[?extractor=<id>]` takes multipart `files` parts, or the same images framed as
`application/x-headhub-images` (what the API and the worker send: no multipart parsing), and
answers both feature forms in the binary wire format (`extractor.wire`). Decoding runs in a
thread pool, a few images per hop; one inference thread per network runs its forward passes,
starting as soon as nothing more is on its way (`extractor.batcher`). The exception is a small
one-image request alone in the process: it is decoded and run on the event loop, where the two
thread hops would cost more than its few milliseconds of work (`INLINE_BYTES`, `INLINE_PIXELS`).
The process serves its default checkpoint and every `<id>.safetensors` of its checkpoint
directory (`extractor.catalog`); `GET /v1/info` describes the default, `GET /v1/extractors` all
of them. Expected failures are problem+json 4xx/503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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

from extractor.admission import (
    ClientGone,
    DecodeGate,
    InFlight,
    over_budget,
    request_pixels,
    until_disconnected,
)
from extractor.batcher import BatcherStopped, MicroBatcher, QueueFull
from extractor.catalog import Catalog, NotServed, Served
from extractor.checkpoint import LoadedExtractor, load_checkpoint
from extractor.imaging import DEFAULT_MAX_PIXELS, ImageRejected, decoded_pixels, load_tensor
from extractor.packing import pack_signs
from extractor.prometheus import ExtractorMetrics
from extractor.web.limits import BodySizeLimitMiddleware
from extractor.web.problems import problem
from extractor.web.requests import RequestContextMiddleware
from extractor.wire import (
    CONTENT_TYPE,
    IMAGES_CONTENT_TYPE,
    FeatureBatch,
    WireFormatError,
    decode_images,
    encode_features,
)

__all__ = ["create_app"]

INLINE_HEADER_CHECKS = 4  # requests with this many images check their headers on the loop
# A one-image request alone in the process is decoded and run on the event loop when its file
# has at most INLINE_BYTES and decodes to at most INLINE_PIXELS (a JPEG at reduced scale): a few
# milliseconds of the loop at most (bench/results/profile.md, Round 4).
INLINE_BYTES = 512 * 1024
INLINE_PIXELS = 300_000

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
            },
            IMAGES_CONTENT_TYPE: {
                "schema": {"type": "string", "format": "binary"},
                "description": "the images framed as in `extractor.wire` (what the API sends)",
            },
        },
    }
}


def create_app(
    checkpoint: str | Path | LoadedExtractor,
    reference: bool = False,
    *,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    fill_batches: bool = False,
    queue_size: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_body: int = 64 * 1024 * 1024,
    max_files: int = 256,
    threads: int | None = None,
    checkpoint_dir: str | Path | None = None,
    max_request_pixels: int | None = None,
    decode_concurrency: int | None = None,
) -> FastAPI:
    """Load the extractors once (frozen) and build the app; inference threads run in lifespan.

    `fill_batches`: batches always wait `max_wait_ms` to fill (`extractor.batcher`).
    `checkpoint` is the default network (the one `/v1/info` and an unqualified
    `/v1/features` use); `checkpoint_dir` holds more, as `<id>.safetensors` (`extractor.catalog`).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    # The same HEADHUB_* variables as the API's settings (this package never imports service/).
    if max_request_pixels is None:
        max_request_pixels = int(os.environ.get("HEADHUB_MAX_REQUEST_PIXELS", 250_000_000))
    if decode_concurrency is None:
        decode_concurrency = int(os.environ.get("HEADHUB_EXTRACTOR_DECODE_CONCURRENCY", 2))
    gate = DecodeGate(decode_concurrency)
    requests = InFlight()  # feature requests inside the handler, reading their body included
    loaded = checkpoint if isinstance(checkpoint, LoadedExtractor) else load_checkpoint(checkpoint)
    metrics = ExtractorMetrics()

    def make_batcher(forward: Any) -> MicroBatcher:
        return MicroBatcher(
            forward,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            queue_size=queue_size,
            on_batch=metrics.observe_batch,
            # by default wait for images on their way only, never for ones that may not come
            eager=not fill_batches,
            on_depth=lambda _depth: metrics.queue_depth.set(
                sum(s.batcher.depth for s in catalog.all())
            ),
        )

    catalog = Catalog(
        loaded,
        None if checkpoint_dir is None else Path(checkpoint_dir),
        reference=reference,
        make_batcher=make_batcher,
        extra_info={"max_batch": max_batch},
    )
    catalog.load_directory()
    default = catalog.default

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(catalog.start)
        ids = [s.id for s in catalog.all()]
        log.info(
            "ready",
            extra={"fields": {"extractor_id": loaded.id, "path": default.path.name, "served": ids}},
        )
        for name, reason in catalog.refused.items():
            log.warning("checkpoint refused", extra={"fields": {"file": name, "reason": reason}})
        try:
            yield
        finally:
            await run_in_threadpool(catalog.stop)

    app = FastAPI(title="headhub extractor", version="1", lifespan=lifespan)
    app.state.loaded, app.state.batcher, app.state.metrics = loaded, default.batcher, metrics
    app.state.catalog = catalog
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=max_body,
        on_refused=metrics.rejected.labels(code="body_too_large").inc,
    )
    app.add_middleware(RequestContextMiddleware, observe=metrics.observe_request)

    def refuse(status: int, code: str, title: str, detail: str, **kw: Any) -> JSONResponse:
        metrics.rejected.labels(code=code).inc()
        return problem(status, title, detail, code, **kw)

    def rejected(exc: ImageRejected) -> JSONResponse:
        title = {413: "Image too large", 415: "Unsupported image format"}.get(
            exc.status, "Invalid image"
        )
        detail = f"{exc.filename}: {exc.reason}"
        return refuse(exc.status, exc.code, title, detail, filename=exc.filename, reason=exc.reason)

    def busy(detail: str) -> JSONResponse:
        return refuse(503, "extractor_busy", "Extractor busy", detail, headers={"Retry-After": "1"})

    async def find(extractor_id: str | None) -> Served | JSONResponse:
        """The network asked for (loading a newly copied file off the event loop), or a 404/409."""
        served = catalog.loaded(extractor_id)
        if served is not None:
            return served
        try:
            return await run_in_threadpool(catalog.get, extractor_id)
        except NotServed as exc:
            if exc.mismatch:
                return refuse(409, "checkpoint_id_mismatch", "Checkpoint mismatch", exc.reason)
            return refuse(404, "extractor_not_served", "Extractor not served", exc.reason)

    @app.post(
        "/v1/features",
        response_class=Response,
        openapi_extra=_MULTIPART_SCHEMA,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "wire-format features"}},
    )
    async def features(request: Request, extractor: str | None = None) -> Response:
        """Features of every `files` part, in order, as `application/x-headhub-features`, from
        the network `extractor` (an id; default: this process's default network)."""
        with requests.entered():
            return await _features(request, extractor)

    async def _features(request: Request, extractor: str | None) -> Response:
        served = await find(extractor)
        if isinstance(served, JSONResponse):
            return served
        batcher, cfg = served.batcher, served.loaded.pretrained_cfg
        content_type = request.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() == IMAGES_CONTENT_TYPE:
            try:
                files = decode_images(await request.body(), max_files)
            except WireFormatError as exc:
                return refuse(400, "invalid_images_body", "Bad images body", str(exc))
        else:
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
        # Shed load before any decoding: images queued for inference and images admitted but
        # still waiting for a decoder both count (docs/threats.md).
        waiting = batcher.depth + gate.pending
        if waiting + len(files) > batcher.capacity:
            return busy(f"inference queue is full ({waiting}/{batcher.capacity})")
        try:
            # Headers only, cheap per image: a few inline, a large request off the loop.
            if len(files) <= INLINE_HEADER_CHECKS:
                total = request_pixels(files, max_pixels)
            else:
                total = await run_in_threadpool(request_pixels, files, max_pixels)
            if total > max_request_pixels:
                raise over_budget(files, total, max_request_pixels)
        except ImageRejected as exc:
            return rejected(exc)

        async def work() -> Any:
            n = len(files)
            batcher.announce(n)  # the batcher waits for these, and only for announced images
            try:
                async with gate.admitted(n):
                    x = await gate.decode(files, cfg, max_pixels=max_pixels)
            except BaseException:
                batcher.withdraw(n)
                raise
            return await batcher.submit(x, announced=n)

        async def alone() -> bool:
            """No other request in the handler or the batcher once every request that arrived
            with this one had its turn to enter (their tasks may not have started yet)."""
            if len(files) != 1 or len(files[0][1]) > INLINE_BYTES:
                return False
            name, data = files[0]
            # the declared size bounds the decoded one: read the header again only for a large
            # JPEG that its reduced-scale decode may bring under the bound
            if (
                total > INLINE_PIXELS
                and decoded_pixels(data, name, cfg, max_pixels=max_pixels) > INLINE_PIXELS
            ):
                return False
            await asyncio.sleep(0)
            return requests.n == 1 and batcher.idle

        try:
            if await alone():
                # Small and alone: decoded and run right here, where two worker-thread hops
                # would cost more than the work and no other request waits for the loop or
                # could share the batch (bench/results/profile.md, Round 4).
                name, data = files[0]
                floats = batcher.run_now(load_tensor(data, name, cfg, max_pixels=max_pixels)[None])
            else:
                floats = await until_disconnected(
                    request, work, metrics.rejected.labels(code="client_gone").inc
                )
        except ImageRejected as exc:
            return rejected(exc)
        except ClientGone:
            return Response(status_code=499)  # nobody is listening; nothing more was computed
        except (QueueFull, BatcherStopped) as exc:
            return busy(str(exc))
        metrics.images_by_extractor.labels(extractor=served.id).inc(len(files))
        body = encode_features(FeatureBatch(served.id, floats, pack_signs(floats)))
        return Response(body, media_type=CONTENT_TYPE, headers={"X-Extractor-Id": served.id})

    @app.get("/v1/info")
    async def get_info() -> dict[str, Any]:
        """The default extractor's identity, shape and size, and the ids of all served here."""
        return default.info | {"extractors": [s.id for s in catalog.all()]}

    @app.get("/v1/extractors")
    async def list_extractors() -> dict[str, Any]:
        """Every network this process serves (default first) and the files it refused."""
        await run_in_threadpool(catalog.load_directory)
        return {
            "default": default.id,
            "items": [s.info for s in catalog.all()],
            "refused": [{"file": f, "reason": r} for f, r in sorted(catalog.refused.items())],
        }

    @app.get("/v1/extractors/{extractor_id}", response_model=None)
    async def get_extractor(extractor_id: str) -> dict[str, Any] | JSONResponse:
        """One served network's `/v1/info` document."""
        served = await find(extractor_id)
        return served if isinstance(served, JSONResponse) else served.info

    @app.get("/v1/extractors/{extractor_id}/checkpoint", response_class=Response)
    async def get_checkpoint(extractor_id: str) -> Response:
        """The packed checkpoint file, byte for byte (its SHA-256 is the id)."""
        served = await find(extractor_id)
        if isinstance(served, JSONResponse):
            return served
        try:
            data = await run_in_threadpool(catalog.checkpoint_bytes, served.id)
        except (NotServed, OSError) as exc:
            return refuse(409, "checkpoint_id_mismatch", "Checkpoint mismatch", str(exc))
        return Response(data, media_type="application/octet-stream")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz() -> dict[str, str] | JSONResponse:
        """Readiness: the network is loaded and the inference thread accepts work."""
        if not catalog.running:
            return problem(503, "Not ready", "an inference thread is not running", "not_ready")
        return {"status": "ready", "extractor_id": loaded.id}

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
