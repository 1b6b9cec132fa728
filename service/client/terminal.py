"""What every client command shares at the terminal: the `--url`/`--key` options, the consoles,
failures printed as one sentence, and the formatting of numbers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console

from service.client.http import ApiClient, CliError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

Url = Annotated[str, typer.Option("--url", envvar="HEADHUB_URL", help="API base URL.")]
Key = Annotated[
    str | None,
    typer.Option("--key", envvar="HEADHUB_KEY", help="Bearer API key.", show_default=False),
]

# Tests swap this for a factory returning FastAPI's TestClient.
http_factory: Callable[[str], httpx.Client] | None = None


def connect(url: str, key: str | None) -> ApiClient:
    http = http_factory(url) if http_factory is not None else None
    return ApiClient(url, key, http=http)


def cli_errors(fn: F) -> F:
    """Turn a `CliError` into its sentence on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CliError as e:
            err_console.print(f"[bold red]error:[/] {e.message}", highlight=False)
            raise typer.Exit(e.exit_code) from None

    return wrapper  # type: ignore[return-value]


def metric(metrics: dict[str, Any] | None, key: str) -> str:
    """One quality metric (`val_top1`, ...) to three decimals, or '-' when absent."""
    v = (metrics or {}).get(key)
    return f"{v:.3f}" if isinstance(v, int | float) else "-"


def size(n: Any) -> str:
    if not isinstance(n, int):
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 2**20:.1f} MiB"
