"""One real stack and one headless Chromium for every browser test of the console.

The stack is `headhub up` (extractor process on the tiny checkpoint, API, worker; SQLite and
blobs under a temp dir), started once for this package like a newcomer's `make run`, and
stopped when its tests are done (not kept busy through the rest of the suite). The browser is
Debian's `/usr/bin/chromium` driven by Playwright's Python package: no browser is downloaded.
Each persona (operator, tenant owner, another tenant, a predict key) gets its own browser
context, so its key lives in its own sessionStorage, as in separate browser tabs.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.fixtures.processes import HeadhubProcess, free_port, start_headhub

CHROMIUM = os.environ.get("HEADHUB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(
    os.environ.get("HEADHUB_CONSOLE_SCREENSHOTS", ROOT / "tests/console/screenshots")
)
DESKTOP = {"width": 1280, "height": 900}


@dataclass
class Stack:
    url: str
    process: HeadhubProcess
    admin_key: str

    @property
    def console(self) -> str:
        return f"{self.url}/console/"

    def api(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )


@pytest.fixture(scope="package")
def stack(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`headhub up` on free ports, ready when /readyz answers 200 (database and extractor)."""
    data_dir = tmp_path_factory.mktemp("console-up")
    port, extractor_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADHUB_")}
    env |= {
        "HEADHUB_ADMIN_KEY": ADMIN_KEY,
        "HEADHUB_RATE_LIMIT_PER_MINUTE": "0",
        "HEADHUB_WORKER_POLL_S": "0.2",
        "HEADHUB_JOB_HEARTBEAT_S": "0.2",
        "HEADHUB_LOG_LEVEL": "WARNING",
    }
    up = start_headhub(
        *("up", "--port", str(port), "--extractor-port", str(extractor_port)),
        *("--data-dir", str(data_dir), "--checkpoint", str(tiny_checkpoint)),
        log_path=data_dir.parent / "console-up.log",
        env=env,
        port=port,
        ready_path="/readyz",
    )
    try:
        yield Stack(up.url, up, ADMIN_KEY)
    finally:
        if up.proc.poll() is None:  # the supervisor stops its children on SIGINT, like Ctrl-C
            up.signal(signal.SIGINT)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                up.kill()  # its children die with it (PR_SET_PDEATHSIG)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (`make test` installs it): browser tests SKIPPED")
    sync_api = pytest.importorskip("playwright.sync_api")
    playwright = sync_api.sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@dataclass
class Persona:
    """One browser context and page, with everything the page did that a test must see."""

    name: str
    context: Any
    page: Any
    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture(scope="package")
def personas(browser: Any, stack: Stack) -> Iterator[dict[str, Persona]]:
    """`personas[name]` opens (once) a browser context for that name."""
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)  # a shared 2-core machine: be patient, never sleep
    opened: dict[str, Persona] = {}

    class Opener(dict[str, Persona]):
        def __missing__(self, name: str) -> Persona:
            context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.url)
            page = context.new_page()
            page.set_default_timeout(20_000)
            persona = Persona(name, context, page)
            page.on("dialog", lambda d: (persona.dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: persona.page_errors.append(str(e)))
            page.on(
                "console",
                lambda m: (
                    "Content Security Policy" in m.text and persona.csp_violations.append(m.text)
                ),
            )
            page.on("request", lambda r: persona.requests.append(f"{r.method} {r.url}"))
            self[name] = opened[name] = persona
            return persona

    yield Opener()
    for persona in opened.values():
        persona.context.close()


def screenshot(page: Any, name: str, *, full_page: bool = True) -> Path:
    """Write `name`.png under the screenshots directory (gitignored; the best are in docs/)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.evaluate("document.getElementById('toast').hidden = true")  # the next toast shows it
    page.screenshot(path=str(path), full_page=full_page)
    return path
