"""Client of the extractor process, used by the API (async) and the worker (sync).

Several base URLs are replicas: a request that cannot be served by one (connection error, timeout,
502/503/504) goes to the next, and the whole round is retried with exponential backoff (one
schedule, `_Failover`, for every call, async or blocking). Every answer is checked before it is
returned: the wire format parses, the width is the extractor's `feature_dim`, the id is that
replica's extractor, the values are finite and the sign bits agree with the floats. Garbage is
never passed on (docs/architecture.md, "Failure handling at the boundaries").

A process may serve several extractors (`extractor.catalog`): every call takes an optional
`extractor_id`, None meaning the process's default. A replica that does not serve the id asked
for is skipped like a busy one; when none does, `ExtractorNotServed` says so.

The hop is kept cheap (bench/results/profile.md): connections are kept alive and pooled per
replica (HTTP/1.1), images travel framed (`application/x-headhub-images`, no multipart
encoding or parsing), and a replica on the same host may be a Unix socket, `unix:/path/x.sock`
(what `headhub up` uses), which skips the TCP stack. The async client (the API's) speaks plain
HTTP, socket or TCP, through `extractor.transport`, a few lines of asyncio and httptools in place
of httpx's own stack; `https:` replicas keep httpx's transport.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import httpx
import numpy as np

from extractor.packing import pack_signs
from extractor.transport import SEND_BUFFER, LeanTransport
from extractor.wire import (
    CONTENT_TYPE,
    IMAGES_CONTENT_TYPE,
    FeatureBatch,
    WireFormatError,
    decode_features,
    encode_images,
)

__all__ = [
    "ExtractorBadResponse",
    "ExtractorClient",
    "ExtractorError",
    "ExtractorNotServed",
    "ExtractorRejectedImage",
    "ExtractorUnavailable",
]

T = TypeVar("T")
_RETRY_STATUS = frozenset({502, 503, 504})
UNIX_PREFIX = "unix:"
# Enough idle connections for every concurrent request of a busy API process to reuse one.
_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30)
# The blocking client (httpx's own transport) sets the same large send buffer on a Unix socket
# as the async one (`transport.SEND_BUFFER`, why there); TCP autotunes.
UNIX_SOCKET_OPTIONS = [(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)]


def socket_path(url: str) -> str | None:
    """The socket file of a `unix:/path` (or `unix:///path`) replica URL, else None."""
    if not url.startswith(UNIX_PREFIX):
        return None
    return "/" + url[len(UNIX_PREFIX) :].lstrip("/")


def _base(url: str) -> str:
    """Where requests to the replica `url` are addressed (a socket's host is a placeholder)."""
    return "http://extractor" if url.startswith(UNIX_PREFIX) else url


_REJECT_STATUS = frozenset({413, 415, 422})


class ExtractorError(Exception):
    """Base of the extractor client's errors."""


class ExtractorUnavailable(ExtractorError):
    """No replica answered usefully; map to 503 with `Retry-After: retry_after`."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExtractorBadResponse(ExtractorError):
    """A replica answered something unusable (bad wire data, wrong width, NaN); map to 502."""


class ExtractorNotServed(ExtractorError):
    """No replica serves the extractor id asked for (`mismatch`: a file claims it but hashes
    otherwise)."""

    def __init__(self, extractor_id: str, reason: str, *, mismatch: bool = False) -> None:
        super().__init__(reason)
        self.extractor_id, self.reason, self.mismatch = extractor_id, reason, mismatch


class ExtractorRejectedImage(ExtractorError):
    """The extractor refused an image (413/415/422); pass that status on, naming the file."""

    def __init__(
        self, filename: str, reason: str, status: int, code: str = "invalid_image"
    ) -> None:
        super().__init__(f"{filename}: {reason}")
        self.filename, self.reason, self.status, self.code = filename, reason, status, code


class _Retry(Exception):
    """This replica cannot serve now; try the next one."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _NotServedHere(_Retry):
    """This replica does not serve the extractor id asked for (404/409 from the catalog)."""

    def __init__(self, message: str, mismatch: bool) -> None:
        super().__init__(message)
        self.mismatch = mismatch


def _retry_after(response: httpx.Response) -> int | None:
    try:
        return max(1, int(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _check_status(url: str, response: httpx.Response) -> None:
    """Raise _Retry for replica trouble, typed errors for everything else that is not a 200."""
    status = response.status_code
    if status == 200:
        return
    if status in _RETRY_STATUS:
        raise _Retry(f"{url} answered {status}", _retry_after(response))
    doc = _json(response)
    if doc.get("code") in ("extractor_not_served", "checkpoint_id_mismatch"):
        detail = str(doc.get("detail") or "not served")
        raise _NotServedHere(detail, mismatch=doc["code"] == "checkpoint_id_mismatch")
    if status in _REJECT_STATUS:
        raise ExtractorRejectedImage(
            str(doc.get("filename", "")),
            str(doc.get("reason") or doc.get("detail") or response.text[:200]),
            status,
            str(doc.get("code", "invalid_image")),
        )
    raise ExtractorBadResponse(f"{url} answered {status}: {doc.get('detail', response.text[:200])}")


def _validate(url: str, response: httpx.Response, info: dict[str, Any], n: int) -> FeatureBatch:
    """Turn a 200 into a FeatureBatch, or raise ExtractorBadResponse."""
    ctype = response.headers.get("content-type", "").split(";")[0].strip()
    if ctype != CONTENT_TYPE:
        raise ExtractorBadResponse(f"{url} answered content type {ctype!r}")
    try:
        batch = decode_features(response.content)
    except WireFormatError as exc:
        raise ExtractorBadResponse(f"{url} sent malformed features: {exc}") from exc
    if len(batch) != n:
        raise ExtractorBadResponse(f"{url} sent {len(batch)} vectors for {n} images")
    if batch.dim != info.get("feature_dim"):
        raise ExtractorBadResponse(f"{url} sent width {batch.dim}, expected {info['feature_dim']}")
    if batch.extractor_id != info.get("id"):
        raise ExtractorBadResponse(f"{url} sent features of extractor {batch.extractor_id[:12]}")
    if not np.isfinite(batch.floats).all():
        raise ExtractorBadResponse(f"{url} sent non-finite feature values")
    if not np.array_equal(pack_signs(batch.floats), batch.bits):
        raise ExtractorBadResponse(f"{url} sent sign bits that disagree with its floats")
    return batch


def _check_info(url: str, response: httpx.Response) -> dict[str, Any]:
    _check_status(url, response)
    doc = _json(response)
    dim = doc.get("feature_dim")
    if not isinstance(dim, int) or dim <= 0 or not isinstance(doc.get("id"), str):
        raise ExtractorBadResponse(f"{url}/v1/info lacks a valid id and feature_dim")
    return doc


class _Failover:
    """The schedule of one call: every replica in turn (round-robin start), then `retries` more
    rounds, each after a growing pause; collects why each attempt failed."""

    def __init__(
        self,
        client: ExtractorClient,
        *,
        forget_info: bool,
        extractor_id: str | None = None,
        images: int = 0,
    ) -> None:
        self.client, self.forget_info = client, forget_info
        self.extractor_id = extractor_id
        self.images = images  # in the request; a large batch that timed out is not sent again
        self.errors: list[str] = []
        self.retry_after: int | None = None
        self.not_served: dict[str, _NotServedHere] = {}  # replica URL -> why

    def __iter__(self) -> Iterator[tuple[float, str]]:
        """(seconds to wait first, replica URL) for each attempt."""
        c = self.client
        for round_ in range(c.retries + 1):
            for i, url in enumerate(c._order()):
                yield (min(2.0, c.backoff * 2 ** (round_ - 1)) if round_ and not i else 0.0), url

    def failed(self, url: str, exc: Exception) -> None:
        if isinstance(exc, _NotServedHere):
            self.not_served[url] = exc
            if len(self.not_served) == len(self.client.urls):  # every replica said so: final
                reasons = {str(e) for e in self.not_served.values()}
                raise ExtractorNotServed(
                    str(self.extractor_id or ""),
                    "; ".join(sorted(reasons)),
                    mismatch=any(e.mismatch for e in self.not_served.values()),
                )
        if isinstance(exc, _Retry):
            self.errors.append(str(exc))
            self.retry_after = exc.retry_after or self.retry_after
        else:  # a transport error: connect/read failures and timeouts
            self.errors.append(f"{url}: {type(exc).__name__} {exc}".strip())
            if self.forget_info:
                self.client._forget(url)
            if self._gave_up_on_work(exc):
                raise self.unavailable()

    def _gave_up_on_work(self, exc: Exception) -> bool:
        """A request that timed out after it was sent may have been worked on all along: with
        more than `retry_max_images` images, sending it to the next replica (and again each
        round) would multiply the work a slow batch costs. A connect timeout did no work."""
        timed_out = isinstance(exc, httpx.TimeoutException) and not isinstance(
            exc, httpx.ConnectTimeout | httpx.PoolTimeout
        )
        return timed_out and self.images > self.client.retry_max_images

    def unavailable(self) -> ExtractorUnavailable:
        n = len(self.client.urls)
        return ExtractorUnavailable("; ".join(self.errors[-n:]), self.retry_after or 1)


_REPLICA_TROUBLE = (_Retry, httpx.TransportError)


class ExtractorClient:
    """Talks to one or more extractor replicas; async methods plus `_sync` twins for the worker.

    `retries` is the number of extra rounds over all URLs after the first; rounds are spaced by
    `backoff * 2**round` seconds (capped at 2 s). `timeout` bounds each HTTP call.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        timeout: float = 10.0,
        retries: int = 2,
        *,
        backoff: float = 0.1,
        transport: httpx.AsyncBaseTransport | None = None,
        sync_transport: httpx.BaseTransport | None = None,
        retry_max_images: int = 4,
    ) -> None:
        self.urls = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else urls) if u]
        if not self.urls:
            raise ValueError("at least one extractor URL is required")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.retry_max_images = retry_max_images
        self._transport, self._sync_transport = transport, sync_transport
        # one pooled client per transport: TCP replicas share one, each Unix socket has its own
        self._aclients: dict[str | None, httpx.AsyncClient] = {}
        self._clients: dict[str | None, httpx.Client] = {}
        # per (replica URL, extractor id or None for the replica's default)
        self._info: dict[tuple[str, str | None], dict[str, Any]] = {}
        self._next = 0  # round-robin start, so replicas share the load

    # -- plumbing -------------------------------------------------------------------------------
    def _forget(self, url: str) -> None:
        for key in [k for k in self._info if k[0] == url]:
            del self._info[key]

    @staticmethod
    def _info_path(extractor_id: str | None) -> str:
        return "/v1/info" if extractor_id is None else f"/v1/extractors/{extractor_id}"

    @staticmethod
    def _params(extractor_id: str | None) -> dict[str, str]:
        return {} if extractor_id is None else {"extractor": extractor_id}

    def _order(self) -> list[str]:
        start = self._next % len(self.urls)
        self._next += 1
        return self.urls[start:] + self.urls[:start]

    async def _failover(
        self,
        call: Callable[[str], Awaitable[T]],
        *,
        forget_info: bool,
        extractor_id: str | None = None,
        images: int = 0,
    ) -> T:
        failover = _Failover(
            self, forget_info=forget_info, extractor_id=extractor_id, images=images
        )
        for pause, url in failover:
            if pause:
                await asyncio.sleep(pause)
            try:
                return await call(url)
            except _REPLICA_TROUBLE as exc:
                failover.failed(url, exc)
        raise failover.unavailable()

    def _failover_sync(
        self,
        call: Callable[[str], T],
        *,
        forget_info: bool,
        extractor_id: str | None = None,
        images: int = 0,
    ) -> T:
        failover = _Failover(
            self, forget_info=forget_info, extractor_id=extractor_id, images=images
        )
        for pause, url in failover:
            if pause:
                time.sleep(pause)
            try:
                return call(url)
            except _REPLICA_TROUBLE as exc:
                failover.failed(url, exc)
        raise failover.unavailable()

    @staticmethod
    def _headers(request_id: str | None) -> dict[str, str]:
        return {"X-Request-ID": request_id} if request_id else {}

    @staticmethod
    def _images_request(
        files: Sequence[tuple[str, bytes]], request_id: str | None
    ) -> tuple[bytes, dict[str, str]]:
        headers = {"Content-Type": IMAGES_CONTENT_TYPE, **ExtractorClient._headers(request_id)}
        return encode_images(list(files)), headers

    # -- async ----------------------------------------------------------------------------------
    def _async_client(self, url: str) -> httpx.AsyncClient:
        """One client per Unix socket, one for every `http:` replica, one for `https:`."""
        path = socket_path(url)
        key = "https" if url.startswith("https:") else path
        if self._transport is not None:
            key = None
        client = self._aclients.get(key)
        if client is None:
            transport: httpx.AsyncBaseTransport | None = self._transport
            if transport is None:
                transport = (
                    httpx.AsyncHTTPTransport(limits=_LIMITS)
                    if key == "https"
                    else LeanTransport(path)
                )
            client = httpx.AsyncClient(timeout=self.timeout, transport=transport)
            self._aclients[key] = client
        return client

    async def _ainfo(
        self,
        url: str,
        request_id: str | None,
        refresh: bool = False,
        extractor_id: str | None = None,
    ) -> dict:
        key = (url, extractor_id)
        if refresh or key not in self._info:
            r = await self._async_client(url).get(
                _base(url) + self._info_path(extractor_id), headers=self._headers(request_id)
            )
            self._info[key] = _check_info(url, r)
        return self._info[key]

    async def _afeatures_once(
        self,
        url: str,
        files: Sequence[tuple[str, bytes]],
        request_id: str | None,
        extractor_id: str | None = None,
    ) -> FeatureBatch:
        info = await self._ainfo(url, request_id, extractor_id=extractor_id)
        body, headers = self._images_request(files, request_id)
        r = await self._async_client(url).post(
            f"{_base(url)}/v1/features",
            content=body,
            headers=headers,
            params=self._params(extractor_id),
        )
        _check_status(url, r)
        if r.headers.get("x-extractor-id", info["id"]) != info["id"]:  # replica was swapped
            info = await self._ainfo(url, request_id, refresh=True, extractor_id=extractor_id)
        return _validate(url, r, info, len(files))

    async def features(
        self,
        files: Sequence[tuple[str, bytes]],
        request_id: str | None = None,
        *,
        extractor_id: str | None = None,
    ) -> FeatureBatch:
        """Features of `(filename, bytes)` images, in order, from the first replica that can,
        computed by the extractor `extractor_id` (None: the replicas' default)."""
        return await self._failover(
            lambda url: self._afeatures_once(url, files, request_id, extractor_id),
            forget_info=True,
            extractor_id=extractor_id,
            images=len(files),
        )

    async def info(
        self, request_id: str | None = None, *, extractor_id: str | None = None
    ) -> dict[str, Any]:
        """`/v1/info` of the first replica that answers (of `extractor_id`, when given)."""
        return await self._failover(
            lambda url: self._ainfo(url, request_id, refresh=True, extractor_id=extractor_id),
            forget_info=False,
            extractor_id=extractor_id,
        )

    async def checkpoint(self, extractor_id: str) -> bytes:
        """The checkpoint file of `extractor_id`, as a replica serves it (not checked here)."""

        async def once(url: str) -> bytes:
            r = await self._async_client(url).get(
                f"{_base(url)}/v1/extractors/{extractor_id}/checkpoint"
            )
            _check_status(url, r)
            return r.content

        return await self._failover(once, forget_info=False, extractor_id=extractor_id)

    async def aclose(self) -> None:
        clients, self._aclients = list(self._aclients.values()), {}
        for client in clients:
            await client.aclose()

    # -- sync (the worker) ------------------------------------------------------------------------
    def _sync_client(self, url: str | None = None) -> httpx.Client:
        path = None if url is None or self._sync_transport is not None else socket_path(url)
        client = self._clients.get(path)
        if client is None:
            transport = self._sync_transport
            if transport is None:
                transport = httpx.HTTPTransport(
                    uds=path, limits=_LIMITS, socket_options=UNIX_SOCKET_OPTIONS if path else None
                )
            client = httpx.Client(timeout=self.timeout, transport=transport)
            self._clients[path] = client
        return client

    def _info_sync(
        self,
        url: str,
        request_id: str | None,
        refresh: bool = False,
        extractor_id: str | None = None,
    ) -> dict:
        key = (url, extractor_id)
        if refresh or key not in self._info:
            r = self._sync_client(url).get(
                _base(url) + self._info_path(extractor_id), headers=self._headers(request_id)
            )
            self._info[key] = _check_info(url, r)
        return self._info[key]

    def _features_once_sync(
        self,
        url: str,
        files: Sequence[tuple[str, bytes]],
        request_id: str | None,
        extractor_id: str | None = None,
    ) -> FeatureBatch:
        info = self._info_sync(url, request_id, extractor_id=extractor_id)
        body, headers = self._images_request(files, request_id)
        r = self._sync_client(url).post(
            f"{_base(url)}/v1/features",
            content=body,
            headers=headers,
            params=self._params(extractor_id),
        )
        _check_status(url, r)
        if r.headers.get("x-extractor-id", info["id"]) != info["id"]:
            info = self._info_sync(url, request_id, refresh=True, extractor_id=extractor_id)
        return _validate(url, r, info, len(files))

    def features_sync(
        self,
        files: Sequence[tuple[str, bytes]],
        request_id: str | None = None,
        *,
        extractor_id: str | None = None,
    ) -> FeatureBatch:
        """Blocking twin of `features`."""
        return self._failover_sync(
            lambda url: self._features_once_sync(url, files, request_id, extractor_id),
            forget_info=True,
            extractor_id=extractor_id,
            images=len(files),
        )

    def info_sync(
        self, request_id: str | None = None, *, extractor_id: str | None = None
    ) -> dict[str, Any]:
        """Blocking twin of `info`."""
        return self._failover_sync(
            lambda url: self._info_sync(url, request_id, refresh=True, extractor_id=extractor_id),
            forget_info=False,
            extractor_id=extractor_id,
        )

    def served_sync(self) -> dict[str, Any]:
        """`GET /v1/extractors` of the first replica that answers: every network it serves."""

        def once(url: str) -> dict[str, Any]:
            r = self._sync_client(url).get(f"{_base(url)}/v1/extractors")
            _check_status(url, r)
            return _json(r)

        return self._failover_sync(once, forget_info=False)

    def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    async def __aenter__(self) -> ExtractorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> ExtractorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
