"""Overload and shutdown against real processes (docs/architecture.md,
"Failure handling at the boundaries").

- A full extractor queue makes the API answer 503 with Retry-After quickly, never a timeout.
- SIGTERM to `headhub api` under load: in-flight requests finish, new ones are refused, it exits.
- The request id travels from the API into the extractor's logs.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from extractor.checkpoint import load_checkpoint
from service.app import create_app
from service.settings import Settings
from tests.conftest import TenantCreds, create_tenant, make_settings
from tests.datasets.makers import noise_png
from tests.fixtures.extractor import start_extractor
from tests.fixtures.processes import HeadhubProcess, free_port, settings_env, start_headhub
from tests.heads.helpers import add_version

pytestmark = pytest.mark.slow
SLOW_BATCH_MS = 4000  # the extractor holds a lone image this long waiting for a batch to fill


def png(seed: int) -> bytes:
    return noise_png(seed, size=40)


def seed_head(settings: Settings, extractor_url: str, checkpoint: Path) -> tuple[TenantCreds, str]:
    """A tenant with one float head for the extractor at `extractor_url`; -> (creds, ref)."""
    info = httpx.get(f"{extractor_url}/v1/info", timeout=10).json()
    app = create_app(settings)
    with TestClient(app) as client:
        t = create_tenant(client, "ops")
        add_version(
            app,
            t.id,
            "colours",
            extractor_id=info["id"],
            d=info["feature_dim"],
            preprocessing=load_checkpoint(checkpoint).pretrained_cfg,
        )
    return t, f"{t.name}/colours"


def start_api(settings: Settings, log_dir: Path) -> HeadhubProcess:
    """`headhub api` on a free port, on the test's settings; returns once /healthz answers."""
    port = free_port()
    return start_headhub(
        "api",
        "--port",
        str(port),
        log_path=log_dir / f"api-{port}.log",
        env=settings_env(settings),
        port=port,
        ready_path="/healthz",
    )


def _wait_queue_depth(ext: HeadhubProcess, depth: int, timeout: float = 15.0) -> None:
    """Block until `depth` images wait in the extractor: the requests are surely in flight."""
    pattern = re.compile(r"^extractor_queue_depth (\S+)$", re.M)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = pattern.search(httpx.get(f"{ext.url}/metrics", timeout=2).text)
        if m and float(m.group(1)) >= depth:
            return
        time.sleep(0.02)
    raise AssertionError(f"the extractor never held {depth} images")


@pytest.fixture(scope="module")
def slow_extractor(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HeadhubProcess]:
    """An extractor whose queue holds 4 images and whose batches wait 4 s to fill."""
    ext = start_extractor(
        tiny_checkpoint,
        tmp_path_factory.mktemp("slow-ext"),
        "--queue-size",
        "4",
        "--max-batch",
        "64",
        "--max-wait-ms",
        str(SLOW_BATCH_MS),
        "--fill-batches",
    )
    yield ext
    ext.stop()


@pytest.fixture(scope="module")
def ops_settings(
    tmp_path_factory: pytest.TempPathFactory, slow_extractor: HeadhubProcess
) -> Settings:
    """SQLite is enough here: these scenarios are about processes and queues, not SQL."""
    data = tmp_path_factory.mktemp("ops-data")
    from service.db import migrate

    url = f"sqlite:///{data / 'headhub.db'}"
    migrate(url)
    return make_settings(data, url, extractor_urls=[slow_extractor.url], extractor_timeout_s=20.0)


@pytest.fixture(scope="module")
def world(ops_settings: Settings, slow_extractor: HeadhubProcess, tiny_checkpoint: Path):  # type: ignore[no-untyped-def]
    return seed_head(ops_settings, slow_extractor.url, tiny_checkpoint)


@pytest.fixture(scope="module")
def shared_api(
    ops_settings: Settings,
    world,
    tmp_path_factory: pytest.TempPathFactory,  # type: ignore[no-untyped-def]
) -> Iterator[HeadhubProcess]:
    """One `headhub api` for the tests that do not stop it (each start costs seconds)."""
    api = start_api(ops_settings, tmp_path_factory.mktemp("api"))
    yield api
    api.kill()


def _predict(url: str, headers: dict[str, str], ref: str, n: int, seed: int) -> httpx.Response:
    files = [("files", (f"{seed}-{i}.png", png(seed * 100 + i), "image/png")) for i in range(n)]
    return httpx.post(
        f"{url}/v1/predict",
        params={"heads": ref, "top_k": 1},
        files=files,
        headers=headers,
        timeout=30,
    )


def test_full_extractor_queue_answers_503_fast_not_a_timeout(
    shared_api: HeadhubProcess,
    world,
    slow_extractor: HeadhubProcess,  # type: ignore[no-untyped-def]
) -> None:
    tenant, ref = world
    api = shared_api
    with ThreadPoolExecutor(2) as pool:
        filler = pool.submit(_predict, api.url, tenant.owner_headers, ref, 4, 1)
        _wait_queue_depth(slow_extractor, 4)  # full for the next ~4 s
        started = time.monotonic()
        refused = _predict(api.url, tenant.owner_headers, ref, 2, 2)
        elapsed = time.monotonic() - started
        assert filler.result().status_code == 200
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "extractor_unavailable"
    assert int(refused.headers["Retry-After"]) >= 1
    # Well before the queue drains (4 s) and far from the extractor timeout (20 s).
    assert elapsed < 3.0, f"refusal took {elapsed:.2f}s"


def _refuses_connections(url: str, within: float) -> bool:
    """True once a new request fails to connect (the listening socket is closed)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
        except httpx.TransportError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits(
    ops_settings: Settings,
    world,
    slow_extractor: HeadhubProcess,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    tenant, ref = world
    api = start_api(ops_settings, tmp_path)
    try:
        with ThreadPoolExecutor(4) as pool:
            in_flight = [
                pool.submit(_predict, api.url, tenant.owner_headers, ref, 1, s) for s in range(3)
            ]
            _wait_queue_depth(slow_extractor, 3)  # all three wait in the extractor's batcher
            sent_at = time.monotonic()
            api.proc.send_signal(signal.SIGTERM)
            refused = _refuses_connections(api.url, within=3.0)  # in-flight ones still wait
            results = [f.result() for f in in_flight]
        rc = api.proc.wait(timeout=20)
        exit_after = time.monotonic() - sent_at
    finally:
        api.kill()
    assert refused, "new connections were still accepted after SIGTERM"
    assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
    assert all(r.json()["results"][0]["predictions"] for r in results)
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown, so the exit status says
    # "terminated by SIGTERM"; the log proves the shutdown was the graceful one.
    assert rc in (0, -signal.SIGTERM), api.log()
    assert "Finished server process" in api.log()
    assert exit_after < 15


def test_the_request_id_travels_from_the_api_into_the_extractor_logs(
    shared_api: HeadhubProcess,
    world,
    slow_extractor: HeadhubProcess,  # type: ignore[no-untyped-def]
) -> None:
    tenant, ref = world
    files = [("files", ("trace.png", png(7), "image/png"))]
    r = httpx.post(
        f"{shared_api.url}/v1/predict",
        params={"heads": ref},
        files=files,
        headers=tenant.owner_headers | {"X-Request-ID": "trace-me-4711"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["X-Request-ID"] == "trace-me-4711"
    assert '"trace-me-4711"' in slow_extractor.log()
    deadline = time.monotonic() + 10  # the access line is written just after the response
    while "trace-me-4711" not in shared_api.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "trace-me-4711" in shared_api.log()
