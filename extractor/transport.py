"""Plain HTTP/1.1 for the API's hop to its extractors: httpx's interface, a lean inside.

Every prediction crosses from the API to an extractor once: over a Unix socket under `headhub up`,
over TCP between containers. Through httpx's own transport the crossing cost about 3 ms of Python
on a 2-core AVX2 host where a plain asyncio exchange on the same socket cost none of that
(bench/results/profile.md, "Round 2"). `LeanTransport` is that plain exchange behind
`httpx.AsyncBaseTransport`, so the client keeps httpx's requests, responses, timeouts and errors,
and `extractor.client` its failover. It speaks `http:` only (TLS stays with httpx's transport),
to one Unix socket (`uds`) or to each request's host and port:

- connections are kept alive and reused, newest first; one that the server closed while idle
  is noticed before reuse, and a request that finds its reused connection dead before any byte of
  the answer came back is sent once more on a new one;
- the request leaves in one write (head and body); the answer is parsed by httptools (the C
  parser uvicorn uses) and read whole: the extractor's answers are small, bounded by
  `max_response_bytes`;
- the timeouts httpx passes (`connect`, `write`, `read`) apply to each phase and raise httpx's
  own timeout errors; a request that is cancelled or fails mid-way closes its connection, so a
  half-read answer is never read by the next request.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

import httptools
import httpx

__all__ = ["SEND_BUFFER", "LeanTransport"]

# A Unix socket's send buffer defaults to net.core.wmem_default (208 KiB), so a 32-image request
# (~3 MB) leaves in ~15 writes, each waiting for the extractor to drain the last one: a
# scheduling round trip apiece on a busy host (~4% of such a request, bench/results/profile.md).
# 4 MiB lets it go at once; the kernel caps the value at net.core.wmem_max. TCP autotunes.
SEND_BUFFER = 4 << 20


class _Answer:
    """One response, parsed by httptools as its bytes arrive (`feed`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.complete = False
        self.keep_alive = False
        self.too_large = False
        self._parser = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.too_large:
                raise httpx.RemoteProtocolError(f"response body over {self.limit} bytes") from None
            raise httpx.RemoteProtocolError(f"malformed response: {exc}") from exc

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, chunk: bytes) -> None:
        if len(self.body) + len(chunk) > self.limit:
            self.too_large = True
            raise ValueError("over the limit")  # stops the parser; `feed` says why
        self.body += chunk

    def on_message_complete(self) -> None:
        # Only valid here: the parser resets once feed_data returns.
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        """Still open, nothing unread (an idle socket that is readable was closed by the
        server), and not idle for longer than `expiry`."""
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and not self.reader._buffer  # type: ignore[attr-defined]
            and now - self.idle_since < expiry
        )

    def close(self) -> None:
        self.writer.close()


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        uds: str | None = None,
        *,
        max_idle: int = 64,
        keepalive_expiry: float = 4.0,
        send_buffer: int = SEND_BUFFER,
        max_response_bytes: int = 256 << 20,
    ) -> None:
        self.uds = uds
        self.max_idle = max_idle
        # Below uvicorn's default keep-alive timeout (5 s): we drop an idle connection before
        # the server does, rather than racing its close.
        self.keepalive_expiry = keepalive_expiry
        self.send_buffer = send_buffer
        self.max_response_bytes = max_response_bytes
        self._idle: dict[str, list[_Connection]] = {}  # per origin: the socket, or host:port

    async def _connect(self, url: httpx.URL, origin: str, timeout: float | None) -> _Connection:
        try:
            async with asyncio.timeout(timeout):
                if self.uds is not None:
                    reader, writer = await asyncio.open_unix_connection(self.uds)
                else:  # asyncio sets TCP_NODELAY itself
                    reader, writer = await asyncio.open_connection(url.host, url.port or 80)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {origin} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{origin}: {exc}") from exc
        sock = writer.get_extra_info("socket")
        if self.uds is not None and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        return _Connection(reader, writer)

    def _reusable(self, origin: str) -> _Connection | None:
        now = time.monotonic()
        idle = self._idle.get(origin, [])
        while idle:
            conn = idle.pop()  # newest first: the likeliest to be alive
            if conn.usable(now, self.keepalive_expiry):
                return conn
            conn.close()
        return None

    def _origin(self, url: httpx.URL) -> str:
        if self.uds is not None:
            return self.uds
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"{url.scheme}: is not for this transport (http only)")
        port = url.port or 80
        return f"[{url.host}]:{port}" if ":" in url.host else f"{url.host}:{port}"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        origin = self._origin(request.url)
        body = await request.aread()
        head = _head(request, len(body))
        conn = self._reusable(origin)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(request.url, origin, timeouts.get("connect"))
        try:
            try:
                answer = await self._exchange(conn, origin, head + body, timeouts)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                if not (reused and getattr(exc, "nothing_read", False)):
                    raise
                conn.close()  # the server closed it while idle: once more on a new connection
                conn = await self._connect(request.url, origin, timeouts.get("connect"))
                answer = await self._exchange(conn, origin, head + body, timeouts)
        except BaseException:
            conn.close()
            raise
        idle = self._idle.setdefault(origin, [])
        if answer.keep_alive and len(idle) < self.max_idle:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.close()
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            content=bytes(answer.body),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _exchange(
        self, conn: _Connection, origin: str, data: bytes, timeouts: dict[str, float | None]
    ) -> _Answer:
        try:
            conn.writer.write(data)
            async with asyncio.timeout(timeouts.get("write")):
                await conn.writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout(f"writing to {origin} timed out") from None
        except OSError as exc:
            raise _nothing_read(httpx.WriteError(f"{origin}: {exc}")) from exc
        answer = _Answer(self.max_response_bytes)
        got_any = False
        try:
            while not answer.complete:
                async with asyncio.timeout(timeouts.get("read")):
                    chunk = await conn.reader.read(1 << 16)
                if not chunk:
                    closed = httpx.RemoteProtocolError("the server closed the connection")
                    raise closed if got_any else _nothing_read(closed)
                got_any = True
                answer.feed(chunk)
        except TimeoutError:
            raise httpx.ReadTimeout(f"reading from {origin} timed out") from None
        except OSError as exc:
            error = httpx.ReadError(f"{origin}: {exc}")
            raise (error if got_any else _nothing_read(error)) from exc
        return answer

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


def _nothing_read(exc: httpx.TransportError) -> httpx.TransportError:
    """Mark an error raised before any byte of the answer arrived (safe to send again)."""
    exc.nothing_read = True  # type: ignore[attr-defined]
    return exc


def _head(request: httpx.Request, length: int) -> bytes:
    target = request.url.raw_path
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
    skip = {b"content-length", b"transfer-encoding", b"connection"}
    for name, value in request.headers.raw:
        if name.lower() not in skip:
            lines.append(name + b": " + value)
    lines.append(b"content-length: " + str(length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"
