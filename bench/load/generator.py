"""Closed-loop HTTP load: N concurrent clients, each sending its next request when the last ends."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from extractor.transport import LeanTransport

# The load generator's HTTP client, the same for every target (API, extractor alone, peer):
# "lean" is the plain asyncio + httptools exchange the API itself uses for its extractor hop
# (`extractor.transport`), "httpx" httpx's own transport, which leaves the servers less of the
# cores they share with it under concurrency (bench/results/profile.md, "Round 3").
CLIENTS = ("lean", "httpx")


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


Send = Callable[[httpx.AsyncClient, random.Random], Awaitable[httpx.Response]]


async def _client_loop(
    http: httpx.AsyncClient,
    send: Send,
    stop_at: float,
    result: LevelResult,
    rng: random.Random,
    requests: int | None = None,
) -> None:
    while time.monotonic() < stop_at and (
        requests is None or sum(result.statuses.values()) < requests
    ):
        start = time.perf_counter()
        try:
            r = await send(http, rng)
            key = str(r.status_code)
        except httpx.HTTPError as e:
            key = type(e).__name__
        elapsed = time.perf_counter() - start
        result.statuses[key] += 1
        if key == "200":
            result.latencies.append(elapsed)
        elif key in ("429", "503"):
            await asyncio.sleep(0.05)  # a polite client backs off a little


async def closed_loop(
    base_url: str,
    send: Send,
    concurrency: int,
    seconds: float,
    *,
    requests: int | None = None,
    headers: dict[str, str] | None = None,
    warmup: int = 0,
    client: str = "lean",
) -> LevelResult:
    """`concurrency` clients, each sending `send`'s next request as soon as its last answer
    arrived, for `seconds` (or until `requests` succeeded, with one client), after `warmup`
    unrecorded requests per client (which also open the connections). `client`: one of
    `CLIENTS`."""
    result = LevelResult(concurrency, seconds)
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS}")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = LeanTransport(max_idle=concurrency) if client == "lean" else None
    async with httpx.AsyncClient(
        base_url=base_url, timeout=60, limits=limits, headers=headers or {}, transport=transport
    ) as http:
        for w in range(warmup):
            await asyncio.gather(
                *(send(http, random.Random(-1 - i - w * concurrency)) for i in range(concurrency))
            )
        started = time.monotonic()
        await asyncio.gather(
            *(
                _client_loop(http, send, started + seconds, result, random.Random(i), requests)
                for i in range(concurrency)
            )
        )
        result.seconds = time.monotonic() - started
    return result


def multipart_sender(
    path: str, images: list[tuple[str, bytes]], params: dict[str, str] | None = None, n: int = 1
) -> Send:
    """POST `n` random images as multipart `files` parts, the way a user's client sends them."""

    def send(http: httpx.AsyncClient, rng: random.Random) -> Awaitable[httpx.Response]:
        picked = [rng.choice(images) for _ in range(n)]
        files = [("files", (name, data, _mime(name))) for name, data in picked]
        return http.post(path, params=params, files=files)

    return send


def _mime(name: str) -> str:
    return "image/jpeg" if name.endswith((".jpg", ".jpeg")) else "image/png"


async def run_level(
    base_url: str,
    key: str,
    head_ref: str,
    images: list[tuple[str, bytes]],
    concurrency: int,
    seconds: float,
    client: str = "lean",
) -> LevelResult:
    """The load table's level: single-image `POST /v1/predict` on one head, top-3."""
    send = multipart_sender("/v1/predict", images, {"heads": head_ref, "top_k": "3"})
    auth = {"Authorization": f"Bearer {key}"}
    return await closed_loop(base_url, send, concurrency, seconds, headers=auth, client=client)


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
