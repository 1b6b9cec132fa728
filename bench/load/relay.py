"""The floor of a second process: a relay that does nothing but pass a request on.

`bench.load` asks the API to add at most 30% to an extractor request, and to keep 80% of the
extractor's throughput under 8 clients. Any API is a second process between the client and the
extractor; what that alone costs on the host (one more HTTP exchange, two more process wake-ups,
an event loop's turn each way) is measured here: a bare ASGI app under uvicorn (uvloop,
httptools) that reads the framed images body and relays it, untouched, to the extractor through
the API's own client transport (`extractor.transport.LeanTransport`), then returns the answer's
bytes. No key, head, multipart or JSON: whatever the API spends beyond this relay is its own.

    python -m bench.load.relay --to http://127.0.0.1:8001 --port 8200
"""

from __future__ import annotations

import argparse
from typing import Any

import httpx

from extractor.transport import LeanTransport

Scope = dict[str, Any]


def create_app(extractor_url: str) -> Any:
    client: httpx.AsyncClient | None = None

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal client
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                client = httpx.AsyncClient(base_url=extractor_url, transport=LeanTransport())
                await send({"type": "lifespan.startup.complete"})
            if client is not None:
                await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/healthz":
            await _answer(send, 200, b"ok")
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        assert client is not None
        r = await client.post(
            "/v1/features", content=b"".join(chunks), headers={"content-type": content_type}
        )
        await _answer(send, r.status_code, r.content)

    return app


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/octet-stream")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.load.relay", description=__doc__)
    p.add_argument("--to", required=True, help="the extractor's URL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8200)
    args = p.parse_args(argv)
    import uvicorn

    uvicorn.run(create_app(args.to), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
