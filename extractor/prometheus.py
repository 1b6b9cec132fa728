"""Prometheus metrics of the extractor process (the API's are `service/http/prometheus.py`).

Each app gets its own `CollectorRegistry` so several apps (tests, replicas in one process) never
collide on metric names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ExtractorMetrics"]

_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ExtractorMetrics:
    """The extractor's metrics, registered in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "extractor_request_duration_seconds",
            "HTTP request latency",
            ["path", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "extractor_batch_size",
            "Images per forward pass (dynamic batching)",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "extractor_inference_duration_seconds",
            "Seconds per forward pass",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "extractor_queue_depth", "Images waiting for inference", registry=self.registry
        )
        self.images = Counter(
            "extractor_images_total", "Images whose features were computed", registry=self.registry
        )
        self.images_by_extractor = Counter(
            "extractor_served_images_total",
            "Images whose features were computed, by extractor id (several served side by side)",
            ["extractor"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "extractor_rejected_total",
            "Requests refused, by problem code",
            ["code"],
            registry=self.registry,
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)
        self.images.inc(size)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.request_seconds.labels(path=route, status=str(status)).observe(seconds)
