"""`headhub up`: the embedded default in one command, supervised.

Migrates the database, then runs the extractor, the API and one worker as child processes of
this one. A child that dies is restarted (with a log line, and a growing pause if it keeps
dying); Ctrl-C or SIGTERM stops all of them. Children run in their own sessions so a terminal's
Ctrl-C reaches only the supervisor, which then stops them in order (worker, API, extractor), and
they get SIGTERM from the kernel should the supervisor itself be killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

log = logging.getLogger("headhub.up")
ADMIN_KEY_FILE = "admin_key"
STABLE_AFTER_S = 30.0  # a child that ran this long resets its restart backoff
MAX_BACKOFF_S = 30.0


@dataclass
class UpConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path(".headhub")
    extractor_port: int | None = None
    checkpoint: Path | None = None
    stop_grace_s: float = 30.0
    api_workers: int = 1
    extractor_threads: int | None = None  # None: half the CPUs this process may use

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures_in_row: int = 0
    restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def ensure_admin_key(data_dir: Path) -> tuple[str, bool]:
    """(admin key, created now). HEADHUB_ADMIN_KEY wins; else a key kept in DIR (mode 0600)."""
    env = os.environ.get("HEADHUB_ADMIN_KEY")
    if env:
        return env, False
    path = data_dir / ADMIN_KEY_FILE
    if path.exists():
        return path.read_text().strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    key = "hh_admin_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    """Starts, watches and stops child processes; `run()` blocks until asked to stop."""

    def __init__(
        self,
        children: list[Child],
        env: dict[str, str],
        ready_url: str,
        stop_grace_s: float = 30.0,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.children = children
        self.env = env
        self.ready_url = ready_url
        self.stop_grace_s = stop_grace_s
        self.on_ready = on_ready
        self.stopping = threading.Event()
        self.ready = False
        self.announced = False  # the URL and key are printed on the first readiness only
        self._signals = 0

    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen(
            child.argv,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    def check_children(self) -> None:
        """Restart any child that exited, backing off when it keeps failing fast."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is None or child.proc.poll() is None:
                continue  # running (or never started: `run` starts everyone)
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    log.warning("restarting %s (restart #%d)", child.name, child.restarts)
                    self.start(child)
                continue
            ran = now - child.started_at
            child.failures_in_row = 0 if ran >= STABLE_AFTER_S else child.failures_in_row + 1
            delay = min(MAX_BACKOFF_S, 0.5 * 2 ** max(0, child.failures_in_row - 1))
            log.error(
                "%s (pid %d) exited with code %s after %.1f s; restarting in %.1f s",
                child.name,
                child.proc.pid,
                child.proc.returncode,
                ran,
                delay,
            )
            if child.name == "api":
                self.ready = False
            child.restart_at = now + delay

    def check_ready(self) -> None:
        try:
            ok = httpx.get(self.ready_url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok and not self.ready:
            self.ready = True
            if self.announced:
                log.info("ready again at %s", self.ready_url)
            elif self.on_ready is not None:
                self.on_ready()
            self.announced = True

    def request_stop(self, signum: int, _frame: object = None) -> None:
        self._signals += 1
        if self._signals > 1:  # a second Ctrl-C: no more patience
            log.warning("second signal: killing children now")
            for child in self.children:
                if child.proc and child.proc.poll() is None:
                    child.proc.kill()
        self.stopping.set()

    def stop_all(self) -> None:
        """SIGTERM in reverse start order; SIGKILL whoever outlives the grace period."""
        running = [c for c in reversed(self.children) if c.proc and c.proc.poll() is None]
        for child in running:
            log.info("stopping %s (pid %d)", child.name, child.pid)
            child.proc.terminate()  # type: ignore[union-attr]
        deadline = time.monotonic() + self.stop_grace_s
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", child.name, self.stop_grace_s)
                child.proc.kill()
                child.proc.wait()

    def run(self) -> None:
        for child in self.children:
            self.start(child)
        next_ready_check = 0.0
        while not self.stopping.is_set():
            self.check_children()
            if not self.ready and time.monotonic() >= next_ready_check:
                self.check_ready()
                next_ready_check = time.monotonic() + 0.5
            self.stopping.wait(0.2)
        self.stop_all()


def default_extractor_threads() -> int:
    """torch intra-op threads for an extractor that shares its host with the API, the worker
    and their clients: half the usable CPUs, at least one. torch's own default (one per
    physical core) leaves nothing for the decoding thread and the HTTP loops, and on 2 cores one
    thread served 8 concurrent clients 10% faster than two (bench/results/profile.md)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (usable or 1) // 2)


EXTRACTOR_SOCKET = "extractor.sock"  # under the data directory: the API's and worker's hop


def child_argv(
    config: UpConfig, extractor_port: int, extractor_socket: Path | None = None
) -> list[Child]:
    py = [sys.executable, "-m", "service.commands.cli"]
    extractor = [*py, "extractor", "serve", "--port", str(extractor_port)]
    extractor += ["--threads", str(config.extractor_threads or default_extractor_threads())]
    if extractor_socket is not None:
        extractor += ["--uds", str(extractor_socket)]
    if config.checkpoint is not None:
        extractor += ["--checkpoint", str(config.checkpoint)]
    return [
        Child("extractor", extractor),
        Child(
            "api",
            [*py, "api", "--host", config.host, "--port", str(config.port)]
            + (["--workers", str(config.api_workers)] if config.api_workers > 1 else []),
        ),
        Child("worker", [*py, "worker"]),
    ]


def run_up(config: UpConfig) -> int:
    """The `headhub up` command; returns the process exit code."""
    from extractor.web.logs import configure_logging

    data_dir = config.data_dir.resolve()
    os.environ["HEADHUB_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("HEADHUB_LOG_FORMAT", "text")
    configure_logging("up", level=os.environ.get("HEADHUB_LOG_LEVEL", "INFO"), fmt="text")
    admin_key, created = ensure_admin_key(data_dir)
    extractor_port = config.extractor_port or config.port + 1
    # The API and the worker reach the extractor on this host through a Unix socket (no TCP
    # stack on the hop; bench/results/profile.md); its TCP port stays open for probes, metrics
    # and anything else. A path too long for a socket address falls back to TCP.
    socket_path = data_dir / EXTRACTOR_SOCKET
    use_socket = len(str(socket_path).encode()) < 100
    extractor_url = f"unix:{socket_path}" if use_socket else f"http://127.0.0.1:{extractor_port}"
    env = dict(os.environ) | {
        "HEADHUB_ADMIN_KEY": admin_key,
        "HEADHUB_EXTRACTOR_URLS": extractor_url,
        "PYTHONUNBUFFERED": "1",
    }
    from service.db import migrate
    from service.settings import Settings

    try:
        settings = Settings(admin_key=SecretStr(admin_key))
        settings.pepper()  # created once here, not raced by two children
        migrate(settings.database_url)
    except Exception as e:
        log.error("cannot prepare the database: %s", e)
        return 1
    log.info("database ready: %s", settings.database_url.split("@")[-1])
    # The extractor serves its default and every checkpoint of this directory; registered ones
    # whose file went missing come back from the blob store's verified copies.
    assert settings.extractor_dir is not None
    extractor_dir = settings.extractor_dir.resolve()
    env["HEADHUB_EXTRACTOR_DIR"] = str(extractor_dir)
    try:
        from service.extractors.files import restore_registered_checkpoints

        restored = restore_registered_checkpoints(settings, extractor_dir)
        if restored:
            log.info("restored %d registered checkpoint(s) into %s", restored, extractor_dir)
    except Exception as e:  # serving the default does not depend on it
        log.warning("cannot restore registered checkpoints: %s", e)

    def announce() -> None:
        print(f"\nheadhub is ready at {config.api_url}", flush=True)
        print(f"web console: {config.api_url}/console/ (sign in with a key)", flush=True)
        if created:
            print(
                f"admin key (shown once; kept in {data_dir / ADMIN_KEY_FILE}, mode 0600):\n"
                f"  {admin_key}",
                flush=True,
            )
        else:
            print(f"admin key: in {data_dir / ADMIN_KEY_FILE} or HEADHUB_ADMIN_KEY", flush=True)
        print("Ctrl-C stops everything.\n", flush=True)

    sup = Supervisor(
        child_argv(config, extractor_port, socket_path if use_socket else None),
        env,
        f"{config.api_url}/readyz",
        stop_grace_s=config.stop_grace_s,
        on_ready=announce,
    )
    signal.signal(signal.SIGINT, sup.request_stop)
    signal.signal(signal.SIGTERM, sup.request_stop)
    sup.run()
    log.info("stopped")
    return 0


__all__ = ["Child", "Supervisor", "UpConfig", "ensure_admin_key", "run_up"]
