"""Dynamic micro-batching (Triton-style): one inference thread, one forward pass per gathered batch.

Requests put their images into a bounded queue and await per-image futures. The inference thread
takes the oldest image, waits until `max_batch` images are queued or `max_wait_ms` has passed since
that image arrived, and runs them as one batch. The forward function must not mix samples, so
every image gets the same features whatever it was batched with.

With `eager=True` (the server's setting) the thread waits only while more images are known to be
on their way: a request announces its images (`announce`) when it is admitted, before decoding,
and they stop counting when queued (`submit(..., announced=n)`) or withdrawn. A lone request runs
at once instead of idling `max_wait_ms` for company that is not coming, and under load the
images that arrive while a batch runs form the next one (bench/results/profile.md). Results go
back to the event loop once per batch and loop, not once per image.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["BatcherStopped", "MicroBatcher", "QueueFull"]

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue cannot take the request's images now; answer 503 with Retry-After."""

    def __init__(self, depth: int, capacity: int) -> None:
        super().__init__(f"inference queue full ({depth}/{capacity} images)")
        self.depth, self.capacity = depth, capacity


class BatcherStopped(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass
class _Item:
    x: Tensor  # (3, H, W)
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    enqueued: float


def _resolve_all(pairs: list[tuple[_Item, np.ndarray | BaseException]]) -> None:
    """Hand results to their event loops: one wake-up per loop, whatever the number of images."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Item, np.ndarray | BaseException]]] = {}
    for item, value in pairs:
        by_loop.setdefault(item.loop, []).append((item, value))

    def apply(group: list[tuple[_Item, np.ndarray | BaseException]]) -> None:
        for item, value in group:
            if item.future.done():  # the request was cancelled (client went away)
                continue
            if isinstance(value, BaseException):
                item.future.set_exception(value)
            else:
                item.future.set_result(value)

    for loop, group in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(apply, group)


class MicroBatcher:
    """Gathers single images from concurrent requests into batched calls of `forward`.

    `forward` takes (B, 3, H, W) float32 and returns (B, D) float features; it runs in the
    inference thread, or in the caller's for `run_now`, one call at a time, under
    `torch.inference_mode()`.
    """

    def __init__(
        self,
        forward: Callable[[Tensor], Tensor],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        queue_size: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        eager: bool = False,
    ) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.capacity = queue_size
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._on_depth = on_depth or (lambda depth: None)
        self.eager = eager  # wait only for announced images (else always up to max_wait)
        self._announced = 0  # images admitted by the server and not yet queued
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._accepting = False
        self._thread: threading.Thread | None = None
        self._taken = 0  # images the inference thread took and has not resolved yet
        self._forward_lock = threading.Lock()  # one forward pass at a time, thread or caller

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Eager, accepting, nothing queued, running or announced: a forward pass now waits for
        no one and delays no one (`run_now`). A batcher that fills its batches never is."""
        return (
            self.eager
            and self.running
            and not self._queue
            and self._taken == 0
            and self._announced <= 0
        )

    @property
    def running(self) -> bool:
        return self._accepting and self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._accepting = True
            self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, finish what is queued, then join the thread."""
        with self._cond:
            self._accepting = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    async def submit(self, images: Tensor, announced: int = 0) -> np.ndarray:
        """Queue (N, 3, H, W) as N items; returns (N, D) float32 in order. All or none queued.
        `announced`: how many of them were announced (they stop counting once queued)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        items = [_Item(x, loop.create_future(), loop, now) for x in images]
        with self._cond:
            self._announced -= announced  # queued or refused: no longer on their way
            self._cond.notify()
            if not self._accepting:
                raise BatcherStopped("the extractor is shutting down")
            if len(self._queue) + len(items) > self.capacity:
                raise QueueFull(len(self._queue), self.capacity)
            self._queue.extend(items)
            self._on_depth(len(self._queue))
            self._cond.notify()
        try:
            rows = await asyncio.gather(*(it.future for it in items))
        except asyncio.CancelledError:
            for it in items:
                it.future.cancel()  # the inference thread skips cancelled items
            raise
        return np.stack(rows)

    def announce(self, n: int) -> None:
        """`n` images will be submitted soon (they are decoding): worth waiting for."""
        with self._cond:
            self._announced += n

    def withdraw(self, n: int) -> None:
        """Announced images that will not come (rejected, cancelled)."""
        with self._cond:
            self._announced -= n
            self._cond.notify()

    def _take_batch(self) -> list[_Item] | None:
        """Block for the next batch; None once stopped and drained."""
        with self._cond:
            while not self._queue:
                if not self._accepting:
                    return None
                self._cond.wait()
            deadline = self._queue[0].enqueued + self.max_wait
            while len(self._queue) < self.max_batch and self._accepting:
                if self.eager and self._announced <= 0:
                    break  # nothing else is on its way: waiting would only add latency
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self.max_batch, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            self._taken = n
            self._on_depth(len(self._queue))
        return [it for it in batch if not it.future.done()]

    def _forward_rows(self, x: Tensor) -> np.ndarray:
        """(B, 3, H, W) -> (B, D) float32 rows, one forward pass at a time, timed as a batch."""
        start = time.perf_counter()
        with self._forward_lock, torch.inference_mode():
            rows = self.forward(x).detach().to(torch.float32).cpu().numpy()
        if rows.shape[0] != x.shape[0]:
            raise RuntimeError(f"forward returned {rows.shape[0]} rows for {x.shape[0]}")
        self._on_batch(x.shape[0], time.perf_counter() - start)
        return rows

    def run_now(self, x: Tensor) -> np.ndarray:
        """Features of (B, 3, H, W) in the caller's thread, past the queue: for a request that
        finds the batcher `idle`, where handing the work to the inference thread and back would
        only add two thread wake-ups (bench/results/profile.md, Round 4)."""
        if not self._accepting:
            raise BatcherStopped("the extractor is shutting down")
        return self._forward_rows(x)

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            outcome: list[tuple[_Item, np.ndarray | BaseException]] = []
            try:
                if batch:
                    rows = self._forward_rows(torch.stack([it.x for it in batch]))
                    outcome = list(zip(batch, rows, strict=True))
            except Exception as exc:
                log.exception("inference failed for a batch of %d", len(batch))
                outcome = [(it, exc) for it in batch]
            finally:
                with self._cond:
                    self._taken = 0  # before any waiter wakes: it finds the batcher idle
            _resolve_all(outcome)
