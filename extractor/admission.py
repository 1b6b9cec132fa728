"""What the extractor process lets in before it spends CPU on a request (docs/threats.md,
"extractor work"): a pixel budget per request, decoding bounded and counted, and no work for a
client that has gone away.

- `request_pixels`: the declared pixels of every image, read from the headers alone (nothing is
  decoded); a request over its budget is refused 413 before any decoding.
- `DecodeGate`: at most `concurrency` images decode at once in the whole process, and every
  image waiting for a decoder counts in `pending`, so load shedding (queue depth + pending) turns
  a burst away at once instead of decoding it all and then finding the queue full.
- `until_disconnected`: runs the request's work and cancels it when the client disconnects
  (the API timed out, or its own client left): images not yet decoded are not, and queued ones
  are skipped by the inference thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from extractor.imaging import ImageRejected, _open_allowed, load_tensor

__all__ = ["ClientGone", "DecodeGate", "InFlight", "request_pixels", "until_disconnected"]

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def request_pixels(files: Sequence[tuple[str, bytes]], max_pixels: int) -> int:
    """Sum of the images' declared pixels; a file whose header is bad or declares more than
    `max_pixels` raises `ImageRejected` (as decoding would, but before it)."""
    total = 0
    for name, data in files:
        img = _open_allowed(data, name, max_pixels)
        try:
            width, height = img.size
        finally:
            img.close()
        total += width * height
    return total


def over_budget(files: Sequence[tuple[str, bytes]], total: int, budget: int) -> ImageRejected:
    return ImageRejected(
        files[0][0] if len(files) == 1 else f"{len(files)} files",
        f"the request declares {total} pixels, over the budget of {budget} per request",
        413,
        "request_pixels_exceeded",
    )


class InFlight:
    """How many requests are inside a handler now (one event loop: a plain counter)."""

    def __init__(self) -> None:
        self.n = 0

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        self.n += 1
        try:
            yield
        finally:
            self.n -= 1


class DecodeGate:
    """Bounds concurrent decoding in the process and counts the images waiting for it."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = max(1, concurrency)
        self.pending = 0  # images admitted and not yet handed to a batcher
        self._semaphore: asyncio.Semaphore | None = None

    @contextlib.asynccontextmanager
    async def admitted(self, n: int) -> AsyncIterator[None]:
        self.pending += n
        try:
            yield
        finally:
            self.pending -= n

    async def decode(
        self, files: Sequence[tuple[str, bytes]], cfg: dict[str, Any], *, max_pixels: int
    ) -> torch.Tensor:
        """(B, 3, H, W). Each decoder permit decodes up to `CHUNK` consecutive images in one
        worker-thread call (one hop per chunk, not per image; still at most `concurrency`
        images decoding at once); cancellation stops the thread before its next image."""
        if self._semaphore is None:  # made on the serving loop
            self._semaphore = asyncio.Semaphore(self.concurrency)
        tensors: list[torch.Tensor] = []
        for start in range(0, len(files), CHUNK):
            chunk = files[start : start + CHUNK]
            stop = threading.Event()
            async with self._semaphore:
                try:
                    tensors += await run_in_threadpool(_decode_chunk, chunk, cfg, max_pixels, stop)
                except asyncio.CancelledError:
                    stop.set()  # the thread finishes the image it is on, then returns
                    raise
        return torch.stack(tensors)


CHUNK = 8  # images one decoder permit decodes before it is handed on


def _decode_chunk(
    files: Sequence[tuple[str, bytes]], cfg: dict[str, Any], max_pixels: int, stop: threading.Event
) -> list[torch.Tensor]:
    out = []
    for name, data in files:
        if stop.is_set():
            break
        out.append(load_tensor(data, name, cfg, max_pixels=max_pixels))
    return out


async def _disconnect(request: Request) -> None:
    """Returns when the client has gone. Only called once the body has been read."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnected(
    request: Request, work: Callable[[], Awaitable[T]], on_gone: Callable[[], None] | None = None
) -> T:
    """`await work()`, cancelled (ClientGone) if the client disconnects first."""
    task = asyncio.ensure_future(work())
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if on_gone is not None:
            on_gone()
        raise ClientGone
    finally:
        for t in (task, watch):
            if not t.done():
                t.cancel()
