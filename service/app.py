"""The API application factory; long-lived clients are built in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from extractor.client import ExtractorClient
from extractor.web.requests import RequestContextMiddleware
from service.console import router as console_router
from service.datasets.endpoints import router as datasets_router
from service.db import make_engine, make_sessionmaker
from service.errors import install_error_handlers
from service.extractors.endpoints import head_moves_router
from service.extractors.endpoints import router as extractors_router
from service.heads.endpoints import admin_router as admin_heads_router
from service.heads.endpoints import router as heads_router
from service.heads.metering import UsageMeter
from service.http.guard import BodyGuardMiddleware, SecurityHeadersMiddleware
from service.http.health import router as health_router
from service.http.invalidation import Listener, LookupCache, bind_sessionmaker, notifier_kind
from service.http.openapi import install_openapi
from service.http.prometheus import REQUESTS_IN_FLIGHT, observe_request
from service.http.prometheus import router as metrics_router
from service.http.ratelimit import AddressLimitMiddleware, make_rate_limits
from service.http.workers import SharedCounter, shared_dir
from service.jobs.endpoints import router as jobs_router
from service.marketplace.endpoints import router as marketplace_router
from service.predict.endpoints import router as predict_router
from service.predict.extractor_info import router as extractor_info_router
from service.settings import Settings, get_settings
from service.storage.blobstore import make_blob_store
from service.tenants.endpoints import router as tenants_router

# Every domain router, in the order they appear in the OpenAPI document.
ROUTERS: list[APIRouter] = [
    health_router,
    metrics_router,
    tenants_router,
    datasets_router,
    jobs_router,
    heads_router,
    head_moves_router,
    admin_heads_router,
    marketplace_router,
    predict_router,
    extractor_info_router,
    extractors_router,
    console_router,  # /v1/whoami, then the console's static files (not in the OpenAPI document)
]


async def _register_default(app: FastAPI) -> None:
    from service.db import session_scope
    from service.extractors.endpoints import registry_default

    try:
        with session_scope(app.state.sessionmaker) as session:
            await registry_default(session, app.state.extractor)
    except Exception as exc:  # the database may be down: GET /v1/extractor(s) tries again
        logging.getLogger("headhub.extractors").info("default extractor not registered: %s", exc)


def create_app_from_environment() -> FastAPI:
    """The app of one `headhub api --workers N` process (uvicorn's factory: settings from the
    environment, as every worker reads the same)."""
    from extractor.web.logs import configure_logging

    settings = get_settings()
    configure_logging("api", level=settings.log_level, fmt=settings.log_format)
    return create_app(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = make_engine(settings.database_url)
        app.state.sessionmaker = make_sessionmaker(app.state.engine)
        # Key and head-resolution cache, cleared by changes in any process (PostgreSQL NOTIFY or
        # Redis pub/sub), else entries live cache_ttl_s (docs/architecture.md).
        # One of several `headhub api --workers N` processes: changes reach the siblings at once.
        workers_dir = shared_dir()
        app.state.lookups = LookupCache(
            ttl_s=settings.cache_ttl_s,
            notified_ttl_s=settings.cache_notified_ttl_s,
            notified=notifier_kind(settings) != "none",
            siblings=SharedCounter(workers_dir / "generation") if workers_dir else None,
        )
        bind_sessionmaker(app.state.sessionmaker, settings, app.state.lookups)
        app.state.invalidation_listener = Listener(app.state.lookups, settings).start()
        # Usage counted in memory, written at least every usage_flush_interval_s and at the end.
        app.state.usage_meter = UsageMeter(
            app.state.sessionmaker, settings.usage_flush_interval_s
        ).start()
        app.state.extractor = ExtractorClient(
            settings.extractor_urls,
            timeout=settings.extractor_timeout_s,
            retry_max_images=settings.extractor_retry_max_images,
        )
        # The extractor processes' default becomes the registry's default if it has none (first
        # start after an upgrade); in the background, so a down extractor never delays startup.
        registering = asyncio.create_task(_register_default(app))
        try:
            yield
        finally:
            registering.cancel()
            app.state.usage_meter.stop()  # in-flight requests are done: write every count
            app.state.invalidation_listener.stop()
            await app.state.extractor.aclose()
            app.state.engine.dispose()

    app = FastAPI(
        title="headhub",
        version="0.1.0",
        summary="Per-task last layers ('heads') on one shared frozen binary feature extractor.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.pepper = settings.pepper()
    app.state.blobs = make_blob_store(settings)
    install_error_handlers(app)
    install_openapi(app)  # shared failures (401, 403, 429, problem+json) on every route
    app.state.rate_limiter = make_rate_limits(settings)  # memory, or Redis with redis_url
    for router in ROUTERS:
        app.include_router(router)
    # The key before the body, then the route's body limit (docs/threats.md).
    app.add_middleware(BodyGuardMiddleware, settings=settings)
    # Outside the key check: per-address limits first, and 401s counted per address.
    app.add_middleware(AddressLimitMiddleware, limits=app.state.rate_limiter)
    app.add_middleware(SecurityHeadersMiddleware)
    # Outermost: sees every response, the 413s of the body limit included.
    app.add_middleware(
        RequestContextMiddleware, observe=observe_request, in_flight=REQUESTS_IN_FLIGHT
    )
    return app
