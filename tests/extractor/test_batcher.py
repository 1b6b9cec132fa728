"""MicroBatcher: gathering, bounds, order and failure handling, on a fake forward function."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from extractor.batcher import BatcherStopped, MicroBatcher, QueueFull


def images(n: int, start: int = 0) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2)


def first_pixel(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, 0, 0]  # (B, 3): each image's own value, so order mix-ups show


async def test_concurrent_submits_share_a_forward_pass_and_keep_their_order() -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(
        first_pixel, max_batch=16, max_wait_ms=200, on_batch=lambda n, s: sizes.append(n)
    )
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit(images(2, 10 * i)) for i in range(4)))
    finally:
        batcher.stop()
    for i, rows in enumerate(results):
        assert rows[:, 0].tolist() == [10 * i, 10 * i + 1]
    assert sum(sizes) == 8 and len(sizes) < 4


async def test_batches_never_exceed_max_batch() -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(
        first_pixel, max_batch=3, max_wait_ms=50, on_batch=lambda n, s: sizes.append(n)
    )
    batcher.start()
    try:
        rows = await batcher.submit(images(10))
    finally:
        batcher.stop()
    assert rows[:, 0].tolist() == list(range(10))
    assert max(sizes) <= 3 and sum(sizes) == 10


async def test_a_full_queue_refuses_the_whole_request() -> None:
    release = threading.Event()

    def blocked(x: torch.Tensor) -> torch.Tensor:
        release.wait(5)
        return first_pixel(x)

    batcher = MicroBatcher(blocked, max_batch=1, max_wait_ms=0, queue_size=3)
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit(images(1)))  # taken by the thread, blocks
        await asyncio.sleep(0.2)
        queued = asyncio.ensure_future(batcher.submit(images(3)))  # fills the queue
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit(images(1))
        assert batcher.depth == 3
        release.set()
        assert (await first).shape == (1, 3) and (await queued).shape == (3, 3)
    finally:
        release.set()
        batcher.stop()


async def test_a_failing_forward_fails_its_requests_and_the_thread_survives() -> None:
    calls = {"n": 0}

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("kernel exploded")
        return first_pixel(x)

    batcher = MicroBatcher(flaky, max_wait_ms=0)
    batcher.start()
    try:
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.submit(images(2))
        assert (await batcher.submit(images(2))).shape == (2, 3)
    finally:
        batcher.stop()


async def test_stop_finishes_queued_work_then_refuses_new_work() -> None:
    batcher = MicroBatcher(first_pixel, max_batch=4, max_wait_ms=100)
    batcher.start()
    pending = asyncio.ensure_future(batcher.submit(images(2)))
    await asyncio.sleep(0)
    await asyncio.to_thread(batcher.stop)
    assert (await pending).shape == (2, 3)
    assert not batcher.running
    with pytest.raises(BatcherStopped):
        await batcher.submit(images(1))


async def test_an_eager_batcher_runs_a_lone_request_without_waiting() -> None:
    """Nothing announced: the forward pass starts at once, not after max_wait_ms."""
    import time

    batcher = MicroBatcher(first_pixel, max_batch=8, max_wait_ms=2000, eager=True)
    batcher.start()
    try:
        start = time.monotonic()
        rows = await batcher.submit(images(1))
        assert time.monotonic() - start < 1.5  # far below the 2 s window it would have waited
    finally:
        batcher.stop()
    assert rows[:, 0].tolist() == [0]


async def test_an_eager_batcher_waits_for_announced_images_and_batches_them() -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(
        first_pixel,
        max_batch=8,
        max_wait_ms=2000,
        eager=True,
        on_batch=lambda n, s: sizes.append(n),
    )
    batcher.start()
    try:
        batcher.announce(3)  # a request of 3 is decoding
        first = asyncio.ensure_future(batcher.submit(images(1), announced=0))
        await asyncio.sleep(0.2)  # the lone image waits: 3 more are on their way
        assert not first.done()
        second = await batcher.submit(images(3, 10), announced=3)
        assert (await first)[:, 0].tolist() == [0]
        assert second[:, 0].tolist() == [10, 11, 12]
    finally:
        batcher.stop()
    assert sizes == [4]


async def test_withdrawn_images_are_not_waited_for() -> None:
    import time

    batcher = MicroBatcher(first_pixel, max_batch=8, max_wait_ms=2000, eager=True)
    batcher.start()
    try:
        batcher.announce(2)
        pending = asyncio.ensure_future(batcher.submit(images(1)))
        await asyncio.sleep(0.1)
        start = time.monotonic()
        batcher.withdraw(2)  # that request's images failed to decode
        await pending
        assert time.monotonic() - start < 1.5
    finally:
        batcher.stop()


async def test_run_now_answers_in_the_callers_thread_only_what_an_idle_batcher_would() -> None:
    release = threading.Event()
    threads: list[str] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        threads.append(threading.current_thread().name)
        release.wait(5)
        return first_pixel(x)

    batcher = MicroBatcher(forward, max_batch=4, max_wait_ms=0, eager=True)
    assert not batcher.idle  # not started
    batcher.start()
    try:
        assert batcher.idle
        release.set()
        assert batcher.run_now(images(2, 7))[:, 0].tolist() == [7, 8]
        assert threads == [threading.current_thread().name]
        batcher.announce(1)
        assert not batcher.idle  # an image is on its way
        batcher.withdraw(1)
        release.clear()
        pending = asyncio.ensure_future(batcher.submit(images(1)))
        await asyncio.sleep(0.2)
        assert not batcher.idle  # the inference thread is running a batch
        release.set()
        assert (await pending)[:, 0].tolist() == [0]
        assert batcher.idle
    finally:
        release.set()
        batcher.stop()
    assert not batcher.idle
    with pytest.raises(BatcherStopped):
        batcher.run_now(images(1))
    filling = MicroBatcher(first_pixel, max_batch=4, max_wait_ms=0, eager=False)
    filling.start()
    try:
        assert not filling.idle  # told to wait for company: never skips the queue
    finally:
        filling.stop()
