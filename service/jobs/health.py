"""`headhub worker`'s probes: what its claim loops and the database last did, served over HTTP.

The worker serves no API, so the probes have a small stdlib server of their own
(`HEADHUB_WORKER_HEALTH_PORT`, off by default), answering like the API's (service/http/health.py):

- `GET /healthz`: 200 `{"status": "ok"}` while every claim loop has made progress within
  `stale_after_s`: it polled the queue, or the heartbeat thread of the job it runs renewed (or
  tried to renew) the lease. A long training job therefore stays healthy; a loop hung in a poll,
  a registration or a dead heartbeat is not (503 `{"status": "stuck", ...}`), and a restart is
  what helps it. A database outage is not a liveness failure: the loop keeps polling and failing.
- `GET /readyz`: 200 `{"status": "ready", "database": true}` when the last database contact (a
  poll, or a heartbeat of a running job) succeeded within `stale_after_s`, i.e. the worker can
  claim jobs; 503 with the reason otherwise (not polled yet, the database failed, draining).

Both read state the loops record; a probe never queries the database, so hammering the port costs
nothing but the answer. The server is bounded: GET only, a few dozen bytes per answer, a socket
timeout, and at most `MAX_CONNECTIONS` connections served at once (the rest are closed unread).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from service.settings import Settings

log = logging.getLogger("headhub.worker.health")

MAX_CONNECTIONS = 8
SOCKET_TIMEOUT_S = 5.0


def stale_after_s(settings: Settings) -> float:
    """How long a loop may go without progress before /healthz calls it stuck: one job lease
    (by then any job it held is claimable by other workers: the queue already treats it as
    dead), and never less than three poll or heartbeat intervals."""
    return max(settings.job_lease_s, 3 * settings.worker_poll_s, 3 * settings.job_heartbeat_s)


class WorkerHealth:
    """Progress of each claim loop and the outcome of the last database contact, thread-safe.

    Loops are named by their worker id; progress reported for a name that is not a running loop
    (a job run by `Worker.run_once` from a test) only counts towards readiness."""

    def __init__(self, stale_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = stale_after_s
        self.clock = clock
        self._lock = threading.Lock()
        self._loops: dict[str, float] = {}  # worker id -> last progress (clock())
        self._db: tuple[float, bool] | None = None  # (when, succeeded) of the last contact
        self._stopping = False

    # -- what the worker records --------------------------------------------------------------

    def loop_started(self, name: str) -> None:
        with self._lock:
            self._loops[name] = self.clock()

    def loop_ended(self, name: str, *, clean: bool) -> None:
        """A loop that returned because the worker stops is no longer watched; one that died
        otherwise stays, and turns /healthz 503 once its progress is stale."""
        if clean:
            with self._lock:
                self._loops.pop(name, None)

    def progress(self, name: str, *, database_ok: bool) -> None:
        """`name` polled the queue or heartbeated its job; the database answered or not."""
        with self._lock:
            now = self.clock()
            if name in self._loops:
                self._loops[name] = now
            self._db = (now, database_ok)

    def stopping(self) -> None:
        with self._lock:
            self._stopping = True

    # -- what the probes answer ---------------------------------------------------------------

    def liveness(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            now = self.clock()
            stuck = sorted(n for n, t in self._loops.items() if now - t > self.stale_after_s)
        if stuck:  # the names (host:pid:loop) go to the log, not to an unauthenticated caller
            log.warning("no progress for over %g s: %s", self.stale_after_s, ", ".join(stuck))
            return 503, {
                "status": "stuck",
                "stuck_loops": len(stuck),
                "bound_s": self.stale_after_s,
            }
        return 200, {"status": "ok"}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            now, db, stopping = self.clock(), self._db, self._stopping
        answered = db is not None and db[1] and now - db[0] <= self.stale_after_s
        if stopping:
            reason = "stopping: no new jobs are claimed"
        elif db is None:
            reason = "the database has not been polled yet"
        elif not db[1]:
            reason = "the last database poll failed"
        elif not answered:
            reason = "no database answer within the bound"
        else:
            return 200, {"status": "ready", "database": True}
        return 503, {"status": "not_ready", "database": answered, "reason": reason}


class _Handler(BaseHTTPRequestHandler):
    server_version = "headhub-worker"
    sys_version = ""
    timeout = SOCKET_TIMEOUT_S  # a client that sends nothing holds a thread this long at most
    error_content_type = "application/json"
    error_message_format = '{"status": "error", "code": %(code)d}\n'
    server: HealthServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            status, body = self.server.health.liveness()
        elif path == "/readyz":
            status, body = self.server.health.readiness()
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if status == 503 and path == "/readyz":
            self.send_header("Retry-After", "5")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("health probe: " + format, *args)


class HealthServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that serves at most MAX_CONNECTIONS connections at once."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], health: WorkerHealth) -> None:
        super().__init__(address, _Handler)
        self.health = health
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the limit: closed unread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def serve_health(health: WorkerHealth, host: str, port: int) -> HealthServer:
    """Serve `health` on host:port (0: an ephemeral port) from a daemon thread; `close()` stops."""
    server = HealthServer((host, port), health)
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.5},
        name="worker-health",
        daemon=True,
    ).start()
    log.info("worker probes on %s:%d (/healthz, /readyz)", host, server.port)
    return server
