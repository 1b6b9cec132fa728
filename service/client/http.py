"""The HTTP side of the `headhub` client commands: one small client, problem details as errors.

Kept apart from the typer commands so the journey can be driven against any `httpx.Client`
(a real server, or FastAPI's TestClient in tests). Head references are parsed and resolved by the
server's own grammar (`service.heads.refs`), so the client never accepts what the server refuses.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from service.heads.refs import (
    HeadRef,
    InvalidHeadRef,
    UnresolvedRef,
    parse_ref,
    version_to_use,
)

DEFAULT_URL = "http://127.0.0.1:8000"


class CliError(Exception):
    """A failure to show the user as one sentence; the command exits non-zero."""

    def __init__(self, message: str, *, status: int | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.exit_code = exit_code


def head_ref(text: str) -> HeadRef:
    """Parse a head reference as the server does; a typo is a `CliError` before any request."""
    try:
        return parse_ref(text)
    except InvalidHeadRef as e:
        raise CliError(
            f"'{text}' is not a head reference ({e.reason}); use owner/name, name:3 or "
            "owner/name@alias."
        ) from None


def problem_message(resp: httpx.Response) -> str:
    """The problem detail's sentence, or the best text the response offers."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title")
        if isinstance(detail, str) and detail:
            return detail
    text = resp.text.strip()
    return f"HTTP {resp.status_code}: {text[:200]}" if text else f"HTTP {resp.status_code}"


class ApiClient:
    """Bearer-authenticated calls to a headhub API; every non-2xx becomes a `CliError`."""

    def __init__(
        self, url: str, key: str | None, *, http: httpx.Client | None = None, timeout: float = 120.0
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if http is None:
            http = httpx.Client(base_url=self.url, timeout=timeout)
        http.headers.update(headers)
        self.http = http

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.TimeoutException as e:
            raise CliError(f"{self.url} did not answer in time ({type(e).__name__}).") from e
        except httpx.TransportError as e:
            raise CliError(f"Cannot reach headhub at {self.url}: {e}.") from e
        if resp.status_code >= 400:
            raise CliError(problem_message(resp), status=resp.status_code)
        return resp

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw).json()

    def post(self, path: str, **kw: Any) -> Any:
        resp = self.request("POST", path, **kw)
        return resp.json() if resp.content else None

    def items(
        self, path: str, params: dict[str, Any] | None = None, *, limit: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every item of a list endpoint, following `next_cursor`."""
        params = {k: v for k, v in (params or {}).items() if v is not None} | {"limit": limit}
        while True:
            page = self.get(path, params=params)
            yield from page.get("items", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return
            params["cursor"] = cursor

    # --- lookups the commands share ---
    def dataset(self, name_or_id: str) -> dict[str, Any]:
        """A dataset by name (the caller's) or by id."""
        for ds in self.items("/v1/datasets"):
            if name_or_id in (ds.get("name"), ds.get("id")):
                return ds
        raise CliError(
            f"No dataset named '{name_or_id}'; create it with `headhub datasets "
            f"create {name_or_id}`.",
            status=404,
        )

    def head(self, ref: HeadRef) -> dict[str, Any]:
        """The head document; a ref without owner is looked up among the caller's heads."""
        owner = ref.owner
        if owner is None:
            mine = [h for h in self.items("/v1/heads") if h.get("name") == ref.name]
            if not mine:
                raise CliError(f"You have no head named '{ref.name}'.", status=404)
            owner = mine[0]["owner"]
        return self.get(f"/v1/heads/{owner}/{ref.name}")  # type: ignore[no-any-return]

    def head_version(self, ref: HeadRef) -> tuple[dict[str, Any], int]:
        """(head, version) resolved by the server's rule (`service.heads.refs.version_to_use`)."""
        head = self.head(ref)
        aliases: dict[str, int] = head.get("aliases") or {}
        versions = [int(v["version"]) for v in head.get("versions") or []]
        try:
            version = version_to_use(
                ref,
                alias_target=aliases.get(ref.effective_alias),
                newest=lambda: max(versions, default=None),
            )
        except UnresolvedRef as e:
            raise CliError(f"Head {head['owner']}/{head['name']} {e.reason}.", status=404) from None
        return head, version
