"""The chart's pods really run: non-root, on a read-only root filesystem, writing only where the
chart mounts a volume.

The chart says the API, the extractor, the worker, migrate and gc need nothing writable but /tmp,
/data (emptyDirs) and /blobs (the blob volume). Here the very commands and environment the chart
renders run as uid 10001 in a private mount namespace whose root is a read-only copy of this
machine's (/usr, /etc, the interpreter, the checkout), with tmpfs at exactly those three paths:
migrate and gc run, then an upload large enough to spool to /tmp, a training job on the worker,
and a prediction go through. Needs root (to build the namespace) and util-linux's `unshare`; CI
runs as root.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.deploy.chart import ADMIN_KEY, KEY_PEPPER, REQUIRED, ROOT, full, render

UID = 10001
NEW_ROOT = "/srv"  # an empty directory of the host, covered by a tmpfs inside the namespace only
UNSHARE = shutil.which("unshare")
CHROOT = shutil.which("chroot")


def _skip_reason() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux to build a mount namespace"
    if UNSHARE is None or CHROOT is None:
        return "needs util-linux unshare and coreutils chroot"
    if not Path(NEW_ROOT).is_dir():
        return f"needs an existing {NEW_ROOT} as the namespace's mount point"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _setup_script(writable: list[str], run: str) -> str:
    """Root part, inside `unshare -m`: a read-only root with tmpfs at `writable`, then `run` as
    uid 10001 chrooted into it."""
    binds = sorted(
        {"/usr", "/etc", str(ROOT), sys.prefix, sys.base_prefix, str(Path(sys.executable).parent)}
    )
    binds = [b for b in binds if not any(b != o and b.startswith(o + "/") for o in binds)]
    lines = [
        "set -eu",
        "mount --make-rprivate /",
        f"mount -t tmpfs -o mode=0755 headhub-root {NEW_ROOT}",
        f"cd {NEW_ROOT}",
        # merged /usr: /bin, /lib, ... are symlinks into it
        *[
            f'[ -L /{d} ] && ln -s "$(readlink /{d})" {d} || true'
            for d in ("bin", "sbin", "lib", "lib64")
        ],
        "mkdir -p proc dev sys home/headhub",
        f"mount -t proc proc {NEW_ROOT}/proc",
        f"mount --rbind /dev {NEW_ROOT}/dev",
        f"mount --rbind /sys {NEW_ROOT}/sys",
    ]
    # The pod's volumes first, the read-only binds after: a checkout under /tmp stays visible.
    for w in writable:
        mode = "mode=1777" if w == "/tmp" else f"uid={UID},gid={UID},mode=0700"
        lines += [
            f"mkdir -p {NEW_ROOT}{w}",
            f"mount -t tmpfs -o {mode} {w.strip('/')} {NEW_ROOT}{w}",
        ]
    for b in binds:
        lines += _bind_read_only(b)
    lines += [
        f"mount -o remount,ro {NEW_ROOT}",  # the root itself: read-only from here on
        f"exec chroot --userspec={UID}:{UID} --groups={UID} {NEW_ROOT} "
        f"/bin/sh -c {shlex.quote(run)}",
    ]
    return "\n".join(lines)


def _bind_read_only(path: str) -> list[str]:
    """Lines that show the host's `path` read-only at the same path under NEW_ROOT.

    A directory that others may not enter (a checkout made by `mktemp -d` is 0700 and owned by
    root) would lock uid 10001 out of everything below it, and its mode cannot change without
    changing the host's. Such a directory is stood in for by a traversable tmpfs with each of
    its entries bound into it, so the paths (the venv's shebangs are absolute) stay the same.
    """
    target = shlex.quote(f"{NEW_ROOT}{path}")
    src = Path(path)
    if src.is_dir() and src.stat().st_mode & 0o005 != 0o005:
        lines = [f"mkdir -p {target}", f"mount -t tmpfs -o mode=0755 stand-in {target}"]
        for entry in sorted(src.iterdir()):
            dst = shlex.quote(f"{NEW_ROOT}{entry}")
            if entry.is_symlink():
                lines.append(f"ln -s {shlex.quote(os.readlink(entry))} {dst}")
                continue
            lines += [
                f"mkdir -p {dst}" if entry.is_dir() else f"touch {dst}",
                f"mount --rbind {shlex.quote(str(entry))} {dst}",
                f"mount -o remount,bind,ro {dst}",
            ]
        return [*lines, f"mount -o remount,ro {target}"]
    return [
        f"mkdir -p {target}",
        f"mount --rbind {shlex.quote(path)} {target}",
        f"mount -o remount,bind,ro {target}",
    ]


def _cmd(args: list[Any]) -> str:
    return " ".join(shlex.quote(str(a)) for a in ["headhub", *args])


def _set(args: list[Any], flag: str, value: str) -> list[str]:
    out = [str(a) for a in args]
    out[out.index(flag) + 1] = value
    return out


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    r = render(REQUIRED)
    spec = {c: r.get("Deployment", full(c))["spec"]["template"]["spec"] for c in ("api", "worker")}
    extractor = r.get("Deployment", full("extractor"))["spec"]["template"]["spec"]
    migrate = r.get("Job", full("migrate"))["spec"]["template"]["spec"]
    gc = r.get("CronJob", full("gc"))["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    # Writable paths: what any of these pods mounts (emptyDirs and the blob volume).
    writable = sorted(
        {
            m["mountPath"]
            for p in (*spec.values(), extractor, migrate, gc)
            for m in p["containers"][0]["volumeMounts"]
        }
    )
    assert writable == ["/blobs", "/data", "/tmp"]

    api_port, ext_port = _free_port(), _free_port()
    config = r.get("ConfigMap", full("config"))["data"]
    env = dict(config) | {
        # The pod reads these from Secrets; SQLite under /data stands in for PostgreSQL.
        "HEADHUB_DATABASE_URL": "sqlite:////data/headhub.db",
        "HEADHUB_ADMIN_KEY": ADMIN_KEY,
        "HEADHUB_KEY_PEPPER": KEY_PEPPER,
        "HEADHUB_EXTRACTOR_URLS": f"http://127.0.0.1:{ext_port}",
        "HEADHUB_WORKER_POLL_S": "0.2",
        "HEADHUB_LOG_FORMAT": "text",
        # As docker/Dockerfile sets them.
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "HOME": "/home/headhub",
        "USER": "headhub",
        # The venv's `headhub` first; mount, chroot for the root half of the script.
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    }
    ext_args = _set(
        _set(extractor["containers"][0]["args"], "--host", "127.0.0.1"), "--port", str(ext_port)
    )
    ext_args = _set(ext_args, "--threads", "1")
    api_args = _set(
        _set(spec["api"]["containers"][0]["args"], "--host", "127.0.0.1"), "--port", str(api_port)
    )
    run = "\n".join(
        [
            "set -e",
            # The emulation holds: the root and the checkout are read-only, the volumes are not.
            f"! touch /probe 2>/dev/null && ! touch {shlex.quote(str(ROOT))}/probe 2>/dev/null",
            *[f"touch {w}/probe && rm {w}/probe" for w in writable],
            'echo "READ-ONLY-ROOT-OK as uid $(id -u)"',
            _cmd(migrate["containers"][0]["args"]),
            _cmd(gc["containers"][0]["args"]),
            f"{_cmd(ext_args)} &",
            f"{_cmd(api_args)} &",
            f"{_cmd(spec['worker']['containers'][0]['args'])} &",
            "wait",
        ]
    )
    log = tmp_path_factory.mktemp("readonly-root") / "pods.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(UNSHARE), "-m", "sh", "-c", _setup_script(writable, run)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the pods exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"API not ready in 180 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield {"url": url, "log": log}
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, sig)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                continue


def _shape_png(label: str, seed: int) -> bytes:
    """A red disc or a blue square on grey, placed and sized by the seed (no two alike)."""
    rng = np.random.default_rng([label == "disc", seed])
    img = Image.new("RGB", (64, 64), (128, 128, 128))
    r, (x, y) = int(rng.integers(12, 20)), rng.integers(20, 44, size=2)
    box = [int(x) - r, int(y) - r, int(x) + r, int(y) + r]
    draw = ImageDraw.Draw(img)
    if label == "disc":
        draw.ellipse(box, fill=(220, int(rng.integers(0, 60)), 40))
    else:
        draw.rectangle(box, fill=(40, int(rng.integers(0, 60)), 220))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _noise_png(seed: int, side: int = 640) -> bytes:
    """About 1.2 MB: more than the 1 MiB a multipart upload keeps in memory before /tmp."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_upload_train_and_predict_on_a_read_only_root(pods: dict[str, Any]) -> None:
    log: Path = pods["log"]
    assert f"READ-ONLY-ROOT-OK as uid {UID}" in log.read_text()
    assert "database migrated" in log.read_text()
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=pods["url"], timeout=60) as c:
        assert c.post("/v1/tenants", json={"name": "ro"}, headers=admin).status_code == 201
        k = c.post("/v1/tenants/ro/keys", json={"scope": "owner", "name": "o"}, headers=admin)
        assert k.status_code == 201, k.text
        owner = {"Authorization": f"Bearer {k.json()['key']}"}
        ds = c.post("/v1/datasets", json={"name": "shapes"}, headers=owner).json()["id"]
        for n, label in enumerate(("disc", "square")):
            files = [
                ("files", (f"{label}-{i}.png", _shape_png(label, i), "image/png")) for i in range(8)
            ]
            files.append(("files", (f"{label}-noise.png", _noise_png(n), "image/png")))
            r = c.post(
                f"/v1/datasets/{ds}/images", data={"label": label}, files=files, headers=owner
            )
            assert r.status_code == 200, (r.text, log.read_text()[-3000:])
            assert r.json()["added"] == 9
        job = c.post(
            "/v1/jobs",
            json={"dataset_id": ds, "head": "shapes", "head_type": "float", "seed": 1},
            headers=owner,
        )
        assert job.status_code == 202, job.text
        deadline = time.monotonic() + 180
        while (state := c.get(f"/v1/jobs/{job.json()['id']}", headers=owner).json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, (state, log.read_text()[-3000:])
            time.sleep(0.5)
        assert state["status"] == "succeeded", (state, log.read_text()[-3000:])
        fresh = _shape_png("disc", 500)
        r = c.post(
            "/v1/predict",
            params={"heads": "shapes"},
            files=[("files", ("c.png", fresh, "image/png"))],
            headers=owner,
        )
        assert r.status_code == 200, (r.text, log.read_text()[-3000:])
    assert "Read-only file system" not in log.read_text()
