"""Set up what the load needs through the public API: a tenant, a dataset, a trained head."""

from __future__ import annotations

import io
import time
import uuid
from typing import Any

import httpx
import numpy as np
from PIL import Image

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 200)}


def synthetic_png(base: tuple[int, int, int], seed: int, size: int = 64) -> bytes:
    """A noisy image around one colour: a dataset any head separates, made without downloads."""
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.normal(base, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _ok(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
    return r.json() if r.content else None


class Scenario:
    def __init__(self, url: str, admin_key: str) -> None:
        self.url = url.rstrip("/")
        self.admin = {"Authorization": f"Bearer {admin_key}"}
        self.http = httpx.Client(base_url=self.url, timeout=120)
        self.owner: dict[str, str] = {}

    def tenant(self) -> str:
        name = f"load-{uuid.uuid4().hex[:8]}"
        _ok(self.http.post("/v1/tenants", json={"name": name}, headers=self.admin))
        key = _ok(
            self.http.post(
                f"/v1/tenants/{name}/keys",
                json={"scope": "owner", "name": "load"},
                headers=self.admin,
            )
        )["key"]
        self.owner = {"Authorization": f"Bearer {key}"}
        self.owner_key = key
        return name

    def dataset(self, per_label: int) -> str:
        ds = _ok(self.http.post("/v1/datasets", json={"name": "colours"}, headers=self.owner))
        for k, (label, colour) in enumerate(COLOURS.items()):
            files = [
                ("files", (f"{label}-{i}.png", synthetic_png(colour, 1000 * k + i), "image/png"))
                for i in range(per_label)
            ]
            _ok(
                self.http.post(
                    f"/v1/datasets/{ds['id']}/images",
                    data={"label": label},
                    files=files,
                    headers=self.owner,
                )
            )
        return str(ds["id"])

    def start_job(
        self, dataset_id: str, head: str, head_type: str, params: dict[str, Any] | None = None
    ) -> str:
        job = _ok(
            self.http.post(
                "/v1/jobs",
                headers=self.owner,
                json={
                    "dataset_id": dataset_id,
                    "head": head,
                    "head_type": head_type,
                    "params": params or {},
                },
            )
        )
        return str(job["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return _ok(self.http.get(f"/v1/jobs/{job_id}", headers=self.owner))  # type: ignore[no-any-return]

    def wait(self, job_id: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} did not finish in {timeout}s")


def write_dataset(root: str, per_label: int = 20) -> int:
    """A folder-per-label image tree (red/, green/, blue/) for trying `headhub upload`."""
    from pathlib import Path

    n = 0
    for k, (label, colour) in enumerate(COLOURS.items()):
        folder = Path(root) / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            (folder / f"{label}-{i:03d}.png").write_bytes(synthetic_png(colour, 1000 * k + i))
            n += 1
    return n


if __name__ == "__main__":
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "colours"
    print(f"wrote {write_dataset(target)} images under {target}/")
