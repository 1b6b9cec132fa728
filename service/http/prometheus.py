"""Prometheus metrics of the API, and the `/metrics` endpoint.

Request latency is measured in-process (`observe_request`, called by the request middleware of
`extractor.web.requests`). Everything about jobs is
read from the database at scrape time: jobs by status and training durations are the queue's
truth, the same whichever API replica is scraped, and they need no metrics port on the workers.
The head cache is read from the app's cache object at scrape time too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TRAINING_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")

# Module level: one registration per process, shared by every app the process builds.
REQUEST_LATENCY = Histogram(
    "headhub_http_request_duration_seconds",
    "API request latency by route template, method and status code.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS_IN_FLIGHT = Gauge("headhub_http_requests_in_flight", "API requests being served now.")


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUEST_LATENCY.labels(method, route, str(status)).observe(seconds)


def _jobs_table() -> Any:
    import service.tables  # noqa: F401  (registers every table on Base.metadata)
    from service.db import Base

    return Base.metadata.tables.get("jobs")


def _seconds_between(dialect: str, start: Any, end: Any) -> Any:
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


class JobsCollector(Collector):
    """`headhub_jobs{status}` and `headhub_training_duration_seconds{head_type}` from SQL.

    Durations are of each succeeded job's final attempt (`finished_at - started_at`). A database
    that does not answer yields `headhub_metrics_database_up 0`, not a failed scrape.
    """

    def __init__(self, sessionmaker: Any, ttl_s: float = 0.0) -> None:
        self.sessionmaker = sessionmaker
        # /metrics is unauthenticated: the query result is reused this long, computed by one
        # scrape at a time, so hammering the route costs no more than one query per period.
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cached: tuple[float, Any] | None = None

    def _read(self, table: Any) -> Any:
        with self._lock:
            if self._cached is not None and time.monotonic() < self._cached[0]:
                result = self._cached[1]
            else:
                try:
                    result = self._query(table) if table is not None else ({}, [])
                except Exception as exc:  # remembered too: a down database is not hammered
                    result = exc
                self._cached = (time.monotonic() + self.ttl_s, result)
        if isinstance(result, Exception):
            raise result
        return result

    def collect(self) -> Iterable[Any]:
        up = GaugeMetricFamily(
            "headhub_metrics_database_up", "1 when the job metrics could be read from the database."
        )
        table = _jobs_table()
        try:
            counts, durations = self._read(table)
        except Exception:  # the scrape must not fail because the database is down
            log.warning("job metrics: database unavailable")
            up.add_metric([], 0)
            yield up
            return
        jobs = GaugeMetricFamily("headhub_jobs", "Training jobs by status.", labels=["status"])
        for status in sorted(set(JOB_STATUSES) | set(counts)):
            jobs.add_metric([status], counts.get(status, 0))
        hist = HistogramMetricFamily(
            "headhub_training_duration_seconds",
            "Wall time of the final attempt of succeeded training jobs.",
            labels=["head_type"],
        )
        for head_type, n, total, cumulative in durations:
            buckets = [(str(b), c) for b, c in zip(TRAINING_BUCKETS, cumulative, strict=True)]
            hist.add_metric([head_type], [*buckets, ("+Inf", n)], sum_value=total)
        up.add_metric([], 1)
        yield jobs
        yield hist
        yield up

    def _query(self, t: Any) -> tuple[dict[str, int], list[tuple[str, int, float, list[int]]]]:
        with self.sessionmaker() as session:
            rows = session.execute(select(t.c.status, func.count()).group_by(t.c.status)).all()
            counts = {str(status): int(n) for status, n in rows}
            dur = _seconds_between(session.get_bind().dialect.name, t.c.started_at, t.c.finished_at)
            cols = [func.sum(case((dur <= b, 1), else_=0)) for b in TRAINING_BUCKETS]
            hist_rows = session.execute(
                select(t.c.head_type, func.count(), func.coalesce(func.sum(dur), 0.0), *cols)
                .where(
                    t.c.status == "succeeded",
                    t.c.started_at.is_not(None),
                    t.c.finished_at.is_not(None),
                )
                .group_by(t.c.head_type)
            ).all()
        durations = [
            (str(r[0]), int(r[1]), float(r[2]), [int(c or 0) for c in r[3:]]) for r in hist_rows
        ]
        return counts, durations


class HeadCacheCollector(Collector):
    """Hits, misses, bytes and entries of the app's head cache (created on first prediction)."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterable[Any]:
        cache = getattr(self.state, "head_cache", None)
        hits = CounterMetricFamily("headhub_head_cache_hits", "Heads served from memory.")
        misses = CounterMetricFamily("headhub_head_cache_misses", "Heads loaded from blobs.")
        size = GaugeMetricFamily("headhub_head_cache_bytes", "Head weight bytes held in memory.")
        entries = GaugeMetricFamily("headhub_head_cache_entries", "Head versions in memory.")
        hits.add_metric([], getattr(cache, "hits", 0))
        misses.add_metric([], getattr(cache, "misses", 0))
        size.add_metric([], getattr(cache, "current_bytes", 0))
        entries.add_metric([], len(cache) if cache is not None else 0)
        yield from (hits, misses, size, entries)


def app_registry(state: Any) -> CollectorRegistry:
    """A per-app registry (tests build many apps in one process; the global one allows one)."""
    registry = CollectorRegistry(auto_describe=False)
    ttl = float(getattr(getattr(state, "settings", None), "probe_cache_s", 0.0))
    registry.register(JobsCollector(state.sessionmaker, ttl_s=ttl))
    registry.register(HeadCacheCollector(state))
    return registry


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}
    },
)
def metrics(request: Request) -> Response:
    """Prometheus scrape target: request latencies, jobs, training durations, head cache."""
    state = request.app.state
    registry = getattr(state, "metrics_registry", None)
    if registry is None:  # built on first scrape: the sessionmaker exists only after startup
        registry = state.metrics_registry = app_registry(state)
    body = generate_latest(REGISTRY) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
