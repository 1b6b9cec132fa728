"""Closed-loop HTTP load: N concurrent clients, each sending its next request when the last ends."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx


@dataclass
class LevelResult:
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # successful requests only
    statuses: Counter[str] = field(default_factory=Counter)
    batch_mean: float | None = None  # extractor images per forward pass during this level

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        return sum(self.statuses.values()) - self.ok

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def _client_loop(
    http: httpx.AsyncClient,
    url: str,
    params: dict[str, str],
    images: list[tuple[str, bytes]],
    stop_at: float,
    result: LevelResult,
    rng: random.Random,
) -> None:
    while time.monotonic() < stop_at:
        name, data = rng.choice(images)
        start = time.perf_counter()
        try:
            r = await http.post(url, params=params, files=[("files", (name, data, "image/png"))])
            key = str(r.status_code)
        except httpx.HTTPError as e:
            key = type(e).__name__
        elapsed = time.perf_counter() - start
        result.statuses[key] += 1
        if key == "200":
            result.latencies.append(elapsed)
        elif key in ("429", "503"):
            await asyncio.sleep(0.05)  # a polite client backs off a little


async def run_level(
    base_url: str,
    key: str,
    head_ref: str,
    images: list[tuple[str, bytes]],
    concurrency: int,
    seconds: float,
) -> LevelResult:
    result = LevelResult(concurrency, seconds)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=60, limits=limits, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(
            *(
                _client_loop(
                    http,
                    "/v1/predict",
                    {"heads": head_ref, "top_k": "3"},
                    images,
                    stop_at,
                    result,
                    random.Random(i),
                )
                for i in range(concurrency)
            )
        )
    return result


_BATCH = re.compile(r"^extractor_batch_size_(sum|count) (\S+)$", re.M)


def batch_totals(extractor_url: str | None) -> tuple[float, float] | None:
    """(images, forward passes) so far, from the extractor's Prometheus histogram."""
    if not extractor_url:
        return None
    try:
        text = httpx.get(f"{extractor_url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    found = dict(_BATCH.findall(text))
    if "sum" not in found or "count" not in found:
        return None
    return float(found["sum"]), float(found["count"])
