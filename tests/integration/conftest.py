"""Two tenants as peers, each with a dataset, a queued job and a private head.

Integration tests act as tenant A and check that nothing of tenant B's leaks or changes.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.conftest import TenantCreds, create_tenant
from tests.fixtures.processes import free_port
from tests.heads.helpers import add_version

LABELS = ("red", "blue")


def solid_png(rgb: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Peer:
    """A tenant and the objects it owns, by the identifiers another tenant must never learn."""

    creds: TenantCreds
    dataset_id: str
    dataset_name: str
    head: str
    job_id: str
    spare_key_id: str
    image_sha256: str
    key_ids: list[str] = field(default_factory=list)
    extractor_id: str = ""  # its head's extractor (shared by every tenant, not a secret)

    @property
    def name(self) -> str:
        return self.creds.name

    @property
    def owner_headers(self) -> dict[str, str]:
        return self.creds.owner_headers

    @property
    def predict_headers(self) -> dict[str, str]:
        return self.creds.predict_headers

    def secrets(self) -> dict[str, str]:
        """Strings that name this tenant's private objects."""
        out = {
            "tenant id": self.creds.id,
            "dataset id": self.dataset_id,
            "dataset name": self.dataset_name,
            "head name": self.head,
            "job id": self.job_id,
            "owner key": self.creds.owner_key,
            "predict key": self.creds.predict_key,
        }
        out |= {f"key id {i}": k for i, k in enumerate(self.key_ids)}
        return out


def extractor_id(app: Any) -> str:
    """The id of the extractor the app talks to, or a placeholder when none answers."""
    url = app.state.settings.extractor_urls[0]
    try:
        return str(httpx.get(f"{url}/v1/info", timeout=2.0).json()["id"])
    except httpx.HTTPError:
        return "e" * 64


def key_id(key: str) -> str:
    return key.split("_", 2)[1]


def make_peer(client: TestClient, app: Any, prefix: str, seed: int) -> Peer:
    """A tenant with a 2-label dataset, a queued float job on it and a private head (v1 with
    a `production` alias). Names carry a random tag so a leak check cannot match by chance."""
    creds = create_tenant(client, prefix)
    tag = uuid.uuid4().hex[:10]
    h = creds.owner_headers
    ds_name = f"ds-{prefix}-{tag}"
    r = client.post("/v1/datasets", json={"name": ds_name}, headers=h)
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    shas = []
    for i, label in enumerate(LABELS):
        png = solid_png((200 * (i == 0), seed, 200 * (i == 1)))
        shas.append(hashlib.sha256(png).hexdigest())
        r = client.post(
            f"/v1/datasets/{ds}/images",
            data={"label": label},
            files=[("files", (f"{label}.png", png, "image/png"))],
            headers=h,
        )
        assert r.status_code == 200 and r.json()["added"] == 1, r.text
    head = f"head-{prefix}-{tag}"
    job = client.post(
        "/v1/jobs", json={"dataset_id": ds, "head": head, "head_type": "float"}, headers=h
    )
    assert job.status_code == 202, job.text
    extractor = extractor_id(app)
    add_version(app, creds.id, head, labels=list(LABELS), seed=seed, extractor_id=extractor)
    r = client.put(
        f"/v1/heads/{creds.name}/{head}/aliases/production", json={"version": 1}, headers=h
    )
    assert r.status_code == 200, r.text
    spare = client.post(
        f"/v1/tenants/{creds.name}/keys", json={"scope": "predict", "name": "spare"}, headers=h
    )
    assert spare.status_code == 201, spare.text
    keys = [key_id(creds.owner_key), key_id(creds.predict_key), spare.json()["id"]]
    return Peer(
        creds, ds, ds_name, head, job.json()["id"], spare.json()["id"], shas[0], keys, extractor
    )


@pytest.fixture(scope="module")
def peers(client: TestClient, app: Any) -> tuple[Peer, Peer]:
    """(A, B): A is the actor, B the victim."""
    return make_peer(client, app, "peer-a", 1), make_peer(client, app, "peer-b", 2)


@dataclass
class LiveServer:
    """A real uvicorn server on a free port, in a thread of this process."""

    server: Any
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def start_live_server(app: Any, timeout: float = 30.0) -> LiveServer:
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return LiveServer(server, thread, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def live_url(settings: Any) -> Iterator[str]:
    """The same settings (database, blobs) served over real HTTP by a second app instance."""
    live = start_live_server(create_app(settings))
    try:
        yield live.url
    finally:
        live.stop()
