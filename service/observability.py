"""Logs, request ids and Prometheus metrics for the API and the worker.

- One JSON object per log line, carrying the request id of the request being served, so one
  `grep` follows a request from the API into the extractor (the id travels as `X-Request-ID`).
- Request latency histograms labelled by route *template* (`/v1/heads/{owner}/{name}`), never by
  raw path, so a scan of random URLs cannot blow up the metric's cardinality.
- Jobs by status are read from the database at scrape time (a custom collector): the numbers are
  the queue's truth, not a counter that drifts when a process restarts.
- Hooks other packages call: head cache hits/misses/bytes, training durations.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
request_id_var: ContextVar[str | None] = ContextVar("headhub_request_id", default=None)
access_log = logging.getLogger("headhub.access")

# --- metrics (module level: one registration per process) ---
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUEST_LATENCY = Histogram(
    "headhub_http_request_duration_seconds",
    "API request latency by route template, method and status code.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS_IN_FLIGHT = Gauge("headhub_http_requests_in_flight", "API requests being served now.")
HEAD_CACHE_HITS = Counter("headhub_head_cache_hits_total", "Head weights served from memory.")
HEAD_CACHE_MISSES = Counter("headhub_head_cache_misses_total", "Head weights loaded from blobs.")
HEAD_CACHE_BYTES = Gauge("headhub_head_cache_bytes", "Bytes of head weights held in memory.")
HEAD_CACHE_ENTRIES = Gauge("headhub_head_cache_entries", "Head versions held in memory.")
TRAINING_DURATION = Histogram(
    "headhub_training_duration_seconds",
    "Wall time of one training attempt, by head type and outcome.",
    ["head_type", "outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)


def current_request_id() -> str | None:
    """The id of the request being served (pass it to the extractor client)."""
    return request_id_var.get()


def record_head_cache(
    *, hit: bool, size_bytes: int | None = None, entries: int | None = None
) -> None:
    """Hook for the head cache: one call per lookup; sizes when they change."""
    (HEAD_CACHE_HITS if hit else HEAD_CACHE_MISSES).inc()
    if size_bytes is not None:
        HEAD_CACHE_BYTES.set(size_bytes)
    if entries is not None:
        HEAD_CACHE_ENTRIES.set(entries)


def record_training(head_type: str, outcome: str, seconds: float) -> None:
    """Hook for the worker: `outcome` is succeeded, failed, cancelled or retried."""
    TRAINING_DURATION.labels(head_type=head_type, outcome=outcome).observe(seconds)


# --- logging ---
class JsonFormatter(logging.Formatter):
    """One JSON object per line with time, level, logger, message, service and request id."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self.service,
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            out["request_id"] = rid
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines for `headhub up` at a terminal; still carries the request id."""

    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s " + service + " %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = request_id_var.get()
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{line} request_id={rid}" if rid else line


def configure_logging(service: str, *, level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger (ours, uvicorn's, sqlalchemy's) through one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs each request


# --- middleware ---
def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


class ObservabilityMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): request id in and out, latency metric, access log."""

    QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.lower().encode())
        rid = incoming.decode("latin-1") if incoming else ""
        if not _VALID_REQUEST_ID.match(rid):
            rid = uuid.uuid4().hex
        token = request_id_var.set(rid)
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        REQUESTS_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUESTS_IN_FLIGHT.dec()
            elapsed = time.perf_counter() - start
            route = _route_template(scope)
            REQUEST_LATENCY.labels(scope["method"], route, str(status)).observe(elapsed)
            access_log.log(
                logging.DEBUG if route in self.QUIET_ROUTES else logging.INFO,
                "%s %s %s",
                scope["method"],
                scope.get("path", ""),
                status,
                extra={
                    "fields": {
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    }
                },
            )
            request_id_var.reset(token)


# --- collectors read at scrape time ---
class JobsByStatusCollector(Collector):
    """`headhub_jobs{status=...}` counted in the database at each scrape.

    `count_by_status` is any callable returning {status: count}; it raises when the database is
    down, which this turns into `headhub_metrics_database_up 0` rather than a failed scrape.
    """

    STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")

    def __init__(self, count_by_status: Callable[[], dict[str, int]]) -> None:
        self.count_by_status = count_by_status

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "headhub_metrics_database_up", "1 when the jobs gauge could be read from the database."
        )
        jobs = GaugeMetricFamily("headhub_jobs", "Training jobs by status.", labels=["status"])
        try:
            counts = self.count_by_status()
        except Exception:  # the scrape must not fail because the database is down
            logging.getLogger(__name__).warning("jobs gauge: database unavailable")
            up.add_metric([], 0)
            yield up
            return
        for status in sorted(set(self.STATUSES) | set(counts)):
            jobs.add_metric([status], counts.get(status, 0))
        up.add_metric([], 1)
        yield jobs
        yield up


def jobs_count_from_db(sessionmaker: Any) -> Callable[[], dict[str, int]]:
    """Counts from the `jobs` table via whatever model maps it (found in the shared metadata)."""
    from sqlalchemy import func, select

    import service.models  # noqa: F401  (registers every table on Base.metadata)
    from service.db import Base

    def count() -> dict[str, int]:
        table = Base.metadata.tables.get("jobs")
        if table is None:
            return {}
        with sessionmaker() as session:
            rows = session.execute(
                select(table.c.status, func.count()).group_by(table.c.status)
            ).all()
        return {str(status): int(n) for status, n in rows}

    return count


def metrics_payload(extra: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """Prometheus text of this process's metrics plus an app's own registry (body, media type)."""
    body = generate_latest(REGISTRY)
    if extra is not None:
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST


def app_registry(sessionmaker: Any) -> CollectorRegistry:
    """A per-app registry (tests build many apps in one process; the global one allows one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsByStatusCollector(jobs_count_from_db(sessionmaker)))
    return registry
