"""`extractor.transport`: the API's lean HTTP/1.1 hop to its extractors, socket or TCP.

A scripted server on a real Unix socket, and again on a real TCP port, answers each request the
way a test asks (normally, slowly, cut off, chunked, closing), and an httpx.AsyncClient on the
transport must give the answer, reuse or drop connections as it should, and raise httpx's own
errors, which `extractor.client`'s failover understands.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from extractor.transport import LeanTransport

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # -> keep the connection


def answer(body: bytes, *, status: int = 200, extra: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\nx-test: yes\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


class Server:
    """Reads one request at a time (head + content-length body) and hands it to `handler`."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # a Unix socket, or None for TCP on 127.0.0.1
        self.base = "http://extractor"  # a socket's URL names no host to connect to
        self.connections = 0
        self.requests: list[bytes] = []
        self.handler: Handler = self.echo

    @staticmethod
    async def echo(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(request.split(b"\r\n\r\n", 1)[1]))
        return True

    @staticmethod
    async def echo_then_close(request: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answers, then closes without saying so (as after a keep-alive timeout)."""
        await Server.echo(request, writer)
        await writer.drain()
        return False

    def stall_first(self, seconds: float) -> Handler:
        """Echoes, but holds the first request's answer back for `seconds`."""

        async def handler(request: bytes, writer: asyncio.StreamWriter) -> bool:
            if len(self.requests) == 1:
                await asyncio.sleep(seconds)
            return await Server.echo(request, writer)

        return handler

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.handler(request, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def transport(self, **kwargs: float) -> LeanTransport:
        return LeanTransport(None if self.path is None else str(self.path), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=["unix", "tcp"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    if request.param == "unix":
        s = Server(tmp_path / "x.sock")
        srv = await asyncio.start_unix_server(s.serve, path=str(s.path))
    else:
        s = Server(None)
        srv = await asyncio.start_server(s.serve, "127.0.0.1", 0)
        s.base = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    async with srv:
        yield s


@contextlib.asynccontextmanager
async def client(server: Server, **kwargs: float) -> AsyncIterator[httpx.AsyncClient]:
    transport = server.transport(**kwargs)
    async with httpx.AsyncClient(transport=transport, base_url=server.base, timeout=2.0) as c:
        yield c


async def test_an_answer_comes_back_whole_and_the_connection_is_reused(server: Server) -> None:
    async with client(server) as c:
        for size in (0, 5, 3 << 20):  # a 3 MB body leaves in one write and comes back whole
            body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            r = await c.post("/v1/features?extractor=abc", content=body)
            assert (r.status_code, r.content, r.headers["x-test"]) == (200, body, "yes")
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n\r\n")[0].decode()
    assert head.startswith("POST /v1/features?extractor=abc HTTP/1.1\r\n")
    assert f"host: {server.base.removeprefix('http://')}" in head.lower()


async def test_concurrent_requests_each_get_their_own_answer(server: Server) -> None:
    async def slow_echo(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        return await Server.echo(request, writer)

    server.handler = slow_echo
    async with client(server) as c:
        bodies = [f"request {i}".encode() for i in range(8)]
        answers = await asyncio.gather(*(c.post("/", content=b) for b in bodies))
        assert [r.content for r in answers] == bodies
        assert server.connections == 8  # one connection per request in flight
        await c.post("/", content=b"again")
        assert server.connections == 8  # then reused


async def test_a_chunked_answer_is_read_to_its_end(server: Server) -> None:
    async def chunked(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        return True

    server.handler = chunked
    async with client(server) as c:
        assert (await c.get("/")).content == b"hello world"
        assert (await c.get("/")).content == b"hello world"
    assert server.connections == 1


async def test_a_connection_the_server_closes_is_not_reused(server: Server) -> None:
    async def close_after(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"ok", extra=b"connection: close\r\n"))
        return False

    server.handler = close_after
    async with client(server) as c:
        for _ in range(3):
            assert (await c.get("/")).content == b"ok"
    assert server.connections == 3


async def test_an_idle_connection_closed_by_the_server_is_replaced(server: Server) -> None:
    server.handler = Server.echo_then_close
    async with client(server) as c:
        assert (await c.post("/", content=b"1")).content == b"1"
        await asyncio.sleep(0.05)  # the close reaches the client while the connection is idle
        assert (await c.post("/", content=b"2")).content == b"2"
    assert server.connections == 2


async def test_a_reused_connection_found_dead_is_tried_once_more_on_a_new_one(
    server: Server,
) -> None:
    server.handler = Server.echo_then_close
    transport = server.transport()
    async with httpx.AsyncClient(transport=transport, base_url=server.base, timeout=2.0) as c:
        assert (await c.post("/", content=b"1")).content == b"1"
        # the race the idle check cannot see: the close has not reached the client yet
        for conn in (conn for idle in transport._idle.values() for conn in idle):
            conn.usable = lambda now, expiry: True  # type: ignore[method-assign]
        await asyncio.sleep(0.05)
        assert (await c.post("/", content=b"2")).content == b"2"
    assert server.connections == 2


async def test_an_idle_connection_past_its_expiry_is_dropped(server: Server) -> None:
    async with client(server, keepalive_expiry=0.05) as c:
        await c.get("/")
        await asyncio.sleep(0.1)
        await c.get("/")
    assert server.connections == 2


async def test_an_answer_cut_off_midway_is_an_error_and_not_retried(server: Server) -> None:
    async def cut(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"0123456789")[:-4])
        return False

    server.handler = cut
    async with client(server) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/")
    assert len(server.requests) == 1


async def test_a_slow_answer_is_a_read_timeout_and_the_connection_is_dropped(
    server: Server,
) -> None:
    server.handler = server.stall_first(1.0)
    async with client(server) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/", content=b"slow", timeout=0.2)
        # the stalled connection's late answer must not become the next request's answer
        assert (await c.post("/", content=b"next")).content == b"next"
    assert server.connections == 2


async def test_a_cancelled_request_drops_its_connection(server: Server) -> None:
    server.handler = server.stall_first(0.5)
    async with client(server) as c:
        task = asyncio.ensure_future(c.post("/", content=b"gone"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await c.post("/", content=b"next")).content == b"next"
    assert server.connections == 2


async def test_an_answer_over_the_size_limit_is_refused(server: Server) -> None:
    async with client(server, max_response_bytes=1000) as c:
        assert len((await c.post("/", content=b"x" * 1000)).content) == 1000
        with pytest.raises(httpx.RemoteProtocolError, match="over 1000 bytes"):
            await c.post("/", content=b"x" * 1001)


async def test_nothing_listening_is_a_connect_error(tmp_path: Path) -> None:
    transport = LeanTransport(str(tmp_path / "nobody.sock"))
    async with httpx.AsyncClient(transport=transport) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("/")
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with httpx.AsyncClient(transport=LeanTransport()) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(f"http://127.0.0.1:{port}/")


async def test_tcp_keeps_one_pool_per_host_and_refuses_tls() -> None:
    one, two = Server(None), Server(None)
    srv1 = await asyncio.start_server(one.serve, "127.0.0.1", 0)
    srv2 = await asyncio.start_server(two.serve, "127.0.0.1", 0)
    urls = [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}/" for s in (srv1, srv2)]
    async with srv1, srv2, httpx.AsyncClient(transport=LeanTransport()) as c:
        for _ in range(2):
            for url in urls:
                assert (await c.post(url, content=url.encode())).content == url.encode()
        with pytest.raises(httpx.UnsupportedProtocol):
            await c.get("https://127.0.0.1:1/")
    assert (one.connections, two.connections) == (1, 1)
