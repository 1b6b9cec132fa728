"""The `headhub up` supervisor on stand-in children: restarts, backoff, stopping (fast)."""

from __future__ import annotations

import sys
import threading
import time

from service.commands.up import Child, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
CRASHER = ["/bin/sh", "-c", "exit 3"]  # starts fast even on a busy machine


def _run(sup: Supervisor) -> threading.Thread:
    t = threading.Thread(target=sup.run, daemon=True)
    t.start()
    return t


def _wait(cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_dead_child_is_restarted_and_the_others_are_untouched() -> None:
    a, b = Child("a", SLEEPER), Child("b", SLEEPER)
    sup = Supervisor([a, b], env={}, ready_url="http://127.0.0.1:9/readyz", stop_grace_s=5)
    thread = _run(sup)
    try:
        _wait(lambda: a.proc is not None and b.proc is not None)
        first_a, first_b = a.pid, b.pid
        a.proc.kill()  # type: ignore[union-attr]
        _wait(lambda: a.restarts == 1 and a.pid != first_a)
        assert b.pid == first_b and b.restarts == 0
    finally:
        sup.stopping.set()
        thread.join(20)
    assert a.proc.poll() is not None and b.proc.poll() is not None  # type: ignore[union-attr]


def test_a_crash_looping_child_backs_off() -> None:
    c = Child("c", CRASHER)
    sup = Supervisor([c], env={}, ready_url="http://127.0.0.1:9/readyz", stop_grace_s=5)
    started = time.monotonic()
    thread = _run(sup)
    try:
        _wait(lambda: c.restarts >= 3, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        sup.stopping.set()
        thread.join(20)
    # Pauses of 0.5 s, 1 s and 2 s precede restarts 1-3; without backoff they take ~0.6 s.
    assert elapsed >= 3.5
    assert c.failures_in_row >= 3


def test_stop_terminates_then_kills_a_child_that_ignores_sigterm() -> None:
    stubborn = Child(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); print('ok', flush=True); time.sleep(120)",
        ],
    )
    sup = Supervisor([stubborn], env={}, ready_url="http://127.0.0.1:9/readyz", stop_grace_s=1.0)
    thread = _run(sup)
    _wait(lambda: stubborn.proc is not None)
    time.sleep(0.5)  # let it install its SIGTERM handler
    started = time.monotonic()
    sup.request_stop(2)
    thread.join(20)
    assert stubborn.proc.returncode == -9  # type: ignore[union-attr]
    assert time.monotonic() - started < 5
