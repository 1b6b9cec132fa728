"""Real processes for the ops tests: a `headhub api` subprocess and a head to predict with."""

from __future__ import annotations

import io
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from extractor.checkpoint import load_checkpoint
from service.app import create_app
from service.settings import Settings
from tests.conftest import ADMIN_KEY, TenantCreds, create_tenant
from tests.fixtures.extractor import _headhub_command, free_port
from tests.heads.helpers import add_version


def png(seed: int, size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


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


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process read the same settings."""
    pepper = settings.key_pepper.get_secret_value() if settings.key_pepper else ""
    return {
        "HEADHUB_DATA_DIR": str(settings.data_dir),
        "HEADHUB_DATABASE_URL": settings.database_url,
        "HEADHUB_BLOB_DIR": str(settings.blob_dir),
        "HEADHUB_ADMIN_KEY": ADMIN_KEY,
        "HEADHUB_KEY_PEPPER": pepper,
        "HEADHUB_EXTRACTOR_URLS": ",".join(settings.extractor_urls),
        "HEADHUB_EXTRACTOR_TIMEOUT_S": str(settings.extractor_timeout_s),
        "HEADHUB_RATE_LIMIT_PER_MINUTE": str(settings.rate_limit_per_minute),
    }


@dataclass
class ApiProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_api(settings: Settings, log_dir: Path, timeout: float = 180.0, **env: Any) -> ApiProcess:
    """`headhub api` on a free port; returns once /healthz answers."""
    port = free_port()
    log_path = log_dir / f"api-{port}.log"
    child_env = os.environ | settings_env(settings) | {k: str(v) for k, v in env.items()}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*_headhub_command(), "api", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env,
        )
    api = ApiProcess(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"api exited with {proc.returncode}:\n{api.log()}")
        try:
            if httpx.get(f"{api.url}/healthz", timeout=1.0).status_code == 200:
                return api
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    api.stop()
    raise RuntimeError(f"api not up after {timeout}s:\n{api.log()}")
