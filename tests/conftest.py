"""Shared fixtures: real databases (SQLite and PostgreSQL), the app over real ASGI, tenants."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.fixtures.db import drop_pg_template, pg_available

ADMIN_KEY = "test-admin-key-" + "x" * 32
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLOSED_PORT_URL = "http://127.0.0.1:9"  # nothing listens: the extractor is "down"

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.processes",
    "tests.fixtures.slow_training",
    "tests.fixtures.extractor",
    "tests.fixtures.s3",
    "tests.fixtures.redis",
]


def pytest_report_header(config: pytest.Config) -> str:
    if pg_available():
        return "headhub: PostgreSQL reachable: tests run on SQLite and PostgreSQL"
    return "headhub: NOTICE: no PostgreSQL server answers: the PostgreSQL half is SKIPPED"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    with contextlib.suppress(Exception):
        drop_pg_template()


@pytest.fixture(scope="module", autouse=True)
def no_listener_outlives_its_module() -> Iterator[None]:
    """Every app a module started has stopped its cache-invalidation listener by the module's
    end: a leaked one keeps a database connection (and reconnects to a dropped test database)."""
    import threading

    def listeners() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("headhub-invalidation")}

    before = listeners()
    yield
    leaked = listeners() - before
    assert not leaked, f"an app's lifespan never ended: {sorted(t.name for t in leaked)}"


@contextlib.contextmanager
def _torch_on_one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every test runs torch on one intra-op thread, as `headhub worker` trains a job: on a
    shared 2-core machine, OpenMP threads spin-waiting against each other make tiny models many
    times slower."""
    with _torch_on_one_thread():
        yield


@pytest.fixture(scope="module")
def one_torch_thread_for_module() -> Iterator[None]:
    """`one_torch_thread` for a module-scoped fixture that runs torch itself (the autouse one
    starts with each test, after module-scoped fixtures): request it from that fixture."""
    with _torch_on_one_thread():
        yield


def make_settings(data_dir: Path, database_url: str, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "admin_key": ADMIN_KEY,
        "key_pepper": "test-pepper",
        "extractor_urls": [CLOSED_PORT_URL],
        "extractor_timeout_s": 2.0,
        # Every TestClient request comes from one address ("testclient"), and suites send many
        # and many 401s on purpose: the per-address limits have tests of their own
        # (tests/http/test_ratelimit.py) and are off elsewhere.
        "rate_limit_address_per_minute": 0,
        "auth_failures_per_minute": 0,
    }
    return Settings(**(base | overrides))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("data"), db_url)


@pytest.fixture(scope="module")
def app(settings: Settings):  # type: ignore[no-untyped-def]
    return create_app(settings)


@pytest.fixture(scope="module")
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return dict(ADMIN_HEADERS)


@dataclass
class TenantCreds:
    name: str
    id: str
    owner_key: str
    predict_key: str

    @property
    def owner_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.owner_key}"}

    @property
    def predict_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.predict_key}"}


def create_tenant(client: TestClient, prefix: str = "t") -> TenantCreds:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    r = client.post("/v1/tenants", json={"name": name}, headers=ADMIN_HEADERS)
    assert r.status_code == 201, r.text
    keys = {}
    for scope in ("owner", "predict"):
        k = client.post(
            f"/v1/tenants/{name}/keys", json={"scope": scope, "name": scope}, headers=ADMIN_HEADERS
        )
        assert k.status_code == 201, k.text
        keys[scope] = k.json()["key"]
    return TenantCreds(name, r.json()["id"], keys["owner"], keys["predict"])


@pytest.fixture
def make_tenant(client: TestClient) -> Callable[[str], TenantCreds]:
    return lambda prefix="t": create_tenant(client, prefix)
