"""What every client command shares at the terminal: the `--url`/`--key` options, the consoles,
failures printed as one sentence, and the formatting of numbers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.text import Text

from service.client.http import ApiClient, CliError
from service.text import is_control


def printable(value: object) -> str:
    """`value` as text that cannot drive the terminal: every control character (C0 but newline
    and tab, DEL, C1, line separators, bidi overrides) is shown as its escape (`\\x1b`)."""
    out = []
    for ch in str(value):
        if is_control(ch, allow_line_breaks=True):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


class SafeConsole(Console):
    """A console for text from the server, which other tenants wrote (a public head's
    description, labels, names): no Rich markup, no emoji codes, and every control character
    shown escaped instead of sent (docs/threats.md, "Stored text shown to other people"). Styles
    come only from `styled`, never from inside a string."""

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("markup", False)
        kw.setdefault("emoji", False)
        kw.setdefault("highlight", False)
        super().__init__(**kw)

    def render_str(self, text: str, *args: Any, **kw: Any) -> Text:
        return super().render_str(printable(text), *args, **kw)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text from plain and (text, style) parts, each made `printable`."""
    return Text.assemble(
        *((printable(p[0]), p[1]) if isinstance(p, tuple) else printable(p) for p in parts)
    )


console = SafeConsole()
err_console = SafeConsole(stderr=True)
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
            err_console.print(styled(("error:", "bold red"), " ", e.message))
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
