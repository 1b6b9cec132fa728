"""Text another tenant wrote never drives the terminal
(docs/threats.md, "Stored text shown to other people").

The server refuses control characters in new text, but the client cannot trust that every
string it prints passed that check (rows stored before it, an older or another server): a
marketplace answer here carries terminal escapes (clear screen, window title, an OSC 8 hyperlink
that shows one address and opens another), a bidi override and Rich markup, and the output must
show them as inert text.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from service.client import terminal
from service.client.terminal import printable
from service.commands.cli import app as cli_app

EVIL = (
    "\x1b[2J\x1b]0;pwned\x07"  # clear the screen, set the window title
    "\x1b]8;;https://evil.example/\x1b\\https://headhub.dev\x1b]8;;\x1b\\"  # a spoofed link
    "\u202egnp.exe"  # right-to-left override
    "[link=https://evil.example]click[/link] [bold red]ALERT[/]"  # Rich markup
    "\x9b31m"  # a C1 control sequence introducer
)


def _fake_server(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1/marketplace":
        card = {
            "owner": "mallory",
            "name": "flowers",
            "labels": [f"rose{EVIL}"],
            "best_metrics": {"val_top1": 0.9},
            "versions": [1],
            "usage_count": 1,
            "description": EVIL,
        }
        return httpx.Response(200, json={"items": [card], "next_cursor": None})
    return httpx.Response(
        404,
        json={"title": "Not found", "status": 404, "detail": f"No dataset {EVIL}", "code": "x"},
    )


@pytest.fixture
def fake_server() -> Iterator[None]:
    terminal.http_factory = lambda url: httpx.Client(
        base_url=url, transport=httpx.MockTransport(_fake_server)
    )
    yield
    terminal.http_factory = None


def _assert_inert(output: str) -> None:
    for ch in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert ch not in output, repr(output)


def test_marketplace_prints_other_tenants_text_inert(fake_server: None) -> None:
    r = CliRunner().invoke(cli_app, ["marketplace", "--key", "k"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    _assert_inert(r.output)
    assert "[link=https://evil.example]click[/link]" in r.output  # markup shown, not applied
    assert "[bold red]ALERT[/]" in r.output
    assert "\\x1b[2J" in r.output and "\\u202e" in r.output  # escapes made visible


def test_problem_details_are_printed_inert(fake_server: None) -> None:
    r = CliRunner().invoke(
        cli_app, ["export", "someone/thing", "--key", "k"], env={"COLUMNS": "400"}
    )
    assert r.exit_code == 1
    _assert_inert(r.output)
    assert "error:" in r.output


def test_printable_keeps_text_and_line_breaks() -> None:
    assert printable("café 🌸 line\nnext\tcol") == "café 🌸 line\nnext\tcol"
    assert printable("a\x1bb\u2028c") == "a\\x1bb\\u2028c"
