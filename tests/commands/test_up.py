"""`headhub up` end to end: readiness, the admin key, the CLI journey, supervision, Ctrl-C.

One supervisor (extractor + API + worker on SQLite under a temp dir, tiny extractor checkpoint)
serves the tests that leave it running, in any order; the Ctrl-C test stops a supervisor of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from bench.load.scenario import write_dataset
from service.commands.cli import app as cli_app
from service.commands.up import UpConfig, child_argv, ensure_admin_key
from tests.fixtures.processes import HeadhubProcess, free_port, start_headhub

pytestmark = pytest.mark.slow
STARTED = re.compile(r"started (\w+) \(pid (\d+)\)")
runner = CliRunner()


@dataclass
class Up:
    process: HeadhubProcess
    data_dir: Path

    @property
    def url(self) -> str:
        return self.process.url

    def log(self) -> str:
        return self.process.log()

    def pids(self) -> dict[str, int]:
        """The newest pid of each child, from the supervisor's log lines."""
        return {name: int(pid) for name, pid in STARTED.findall(self.log())}

    def wait_for(self, predicate, what: str, timeout: float = 90.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.process.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.log()[-4000:]}")


def _free_pair() -> int:
    """A free port whose successor is free too (the API and its extractor)."""
    while True:
        port = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


@contextlib.contextmanager
def running_up(checkpoint: Path, data_dir: Path) -> Iterator[Up]:
    """`headhub up` on fresh ports and `data_dir`, ready; every child is killed afterwards."""
    port = _free_pair()
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("HEADHUB_")}
    env |= {"HEADHUB_RATE_LIMIT_PER_MINUTE": "0", "HEADHUB_WORKER_POLL_S": "0.2"}
    process = start_headhub(
        *("up", "--port", str(port), "--data-dir", str(data_dir)),
        *("--checkpoint", str(checkpoint)),
        log_path=data_dir.parent / f"{data_dir.name}-up.log",
        env=env,
        port=port,
    )
    handle = Up(process, data_dir)
    try:
        handle.wait_for(lambda: "headhub is ready at" in handle.log(), "readiness", 180)
        yield handle
    finally:
        process.kill()
        for pid in handle.pids().values():  # never leak children, whatever failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_extractor_gets_half_the_cpus_unless_told(tmp_path: Path) -> None:
    """The extractor shares the host with the API, the worker and their clients: torch's own
    default (a thread per core) would leave its decoding thread and the HTTP loops no core."""

    def threads(config: UpConfig) -> int:
        argv = child_argv(config, 9001)[0].argv
        assert argv[argv.index("serve") - 1] == "extractor"
        return int(argv[argv.index("--threads") + 1])

    assert threads(UpConfig(data_dir=tmp_path)) == max(1, len(os.sched_getaffinity(0)) // 2)
    assert threads(UpConfig(data_dir=tmp_path, extractor_threads=3)) == 3


@pytest.fixture(scope="module")
def up(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """The shared supervisor; no test stops it (a killed child is restarted by it)."""
    with running_up(tiny_checkpoint, tmp_path_factory.mktemp("up-data")) as handle:
        yield handle


def test_ready_prints_url_and_the_admin_key_once_and_stores_it_private(up: Up) -> None:
    key = (up.data_dir / "admin_key").read_text().strip()
    assert stat.S_IMODE((up.data_dir / "admin_key").stat().st_mode) == 0o600
    assert up.log().count(key) == 1
    assert f"headhub is ready at {up.url}" in up.log()
    assert f"web console: {up.url}/console/" in up.log()
    assert httpx.get(f"{up.url}/readyz").status_code == 200
    r = httpx.get(f"{up.url}/v1/tenants", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200


def test_admin_key_is_created_once_then_reused(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("HEADHUB_ADMIN_KEY", raising=False)
    key, created = ensure_admin_key(tmp_path)
    again, created_again = ensure_admin_key(tmp_path)
    assert created and not created_again and key == again and len(key) >= 32
    monkeypatch.setenv("HEADHUB_ADMIN_KEY", "y" * 40)
    assert ensure_admin_key(tmp_path) == ("y" * 40, False)


def _cli(*args: str, key: str, url: str) -> str:
    r = runner.invoke(cli_app, [*args, "--url", url, "--key", key], env={"COLUMNS": "200"})
    assert r.exit_code == 0, f"headhub {' '.join(args)}:\n{r.output}"
    return r.output


def test_cli_journey_upload_train_predict_publish_export(up: Up, tmp_path: Path) -> None:
    admin = (up.data_dir / "admin_key").read_text().strip()
    _cli("tenants", "create", "acme", key=admin, url=up.url)
    owner = _cli("keys", "create", "acme", "--scope", "owner", key=admin, url=up.url)
    key = next(line for line in owner.splitlines() if line.startswith("hh_"))
    _cli("datasets", "create", "colours", key=key, url=up.url)
    write_dataset(str(tmp_path / "colours"), per_label=8)
    first = _cli(
        "upload", "colours", str(tmp_path / "colours"), "--batch-files", "5", key=key, url=up.url
    )
    assert "added 24, duplicates 0" in first
    resumed = _cli("upload", "colours", str(tmp_path / "colours"), key=key, url=up.url)
    assert "added 0" in resumed and "skipped (sent before) 24" in resumed
    again = _cli("upload", "colours", str(tmp_path / "colours"), "--no-resume", key=key, url=up.url)
    assert "added 0, duplicates 24" in again

    trained = _cli("train", "colours", "--head", "colours", "--type", "float", key=key, url=up.url)
    assert "trained acme/colours:1" in trained
    assert "succeeded" in _cli("jobs", key=key, url=up.url)
    assert "acme/colours" in _cli("heads", key=key, url=up.url)
    _cli("alias", "colours", "production", "1", key=key, url=up.url)
    versions = _cli("heads", "colours", key=key, url=up.url)
    assert "production" in versions and "float" in versions
    _cli("publish", "colours", "--description", "red green blue", key=key, url=up.url)
    assert "acme/colours" in _cli("marketplace", "-q", "colours", key=key, url=up.url)

    image = tmp_path / "colours" / "red" / "red-000.png"
    table = _cli(
        "predict", str(image), "--head", "acme/colours", "--top-k", "2", key=key, url=up.url
    )
    assert "red-000.png" in table and "acme/colours" in table

    out = tmp_path / "colours.safetensors"
    _cli("export", "colours", "--format", "safetensors", "-o", str(out), key=key, url=up.url)
    from safetensors import safe_open

    with safe_open(str(out), framework="numpy") as f:
        assert f.keys()
    onnx_out = tmp_path / "colours.onnx"
    _cli(
        "export",
        "acme/colours@production",
        "--format",
        "onnx",
        "-o",
        str(onnx_out),
        key=key,
        url=up.url,
    )
    import onnx

    onnx.checker.check_model(onnx.load(str(onnx_out)))


def test_cli_errors_from_the_live_server_are_sentences(up: Up) -> None:
    admin = (up.data_dir / "admin_key").read_text().strip()
    r = runner.invoke(cli_app, ["heads", "nobody/nothing", "--url", up.url, "--key", admin])
    assert r.exit_code == 1
    assert "error:" in r.output and "Traceback" not in r.output


def test_a_killed_child_is_restarted_with_a_log_line(up: Up) -> None:
    old = up.pids()
    assert set(old) == {"extractor", "api", "worker"}
    os.kill(old["api"], signal.SIGKILL)
    up.wait_for(lambda: up.pids()["api"] != old["api"], "the api to be restarted")
    assert f"api (pid {old['api']}) exited with code -9" in up.log()
    assert "restarting api" in up.log()
    up.wait_for(lambda: _status(f"{up.url}/readyz") == 200, "the new api to be ready")
    assert up.pids()["extractor"] == old["extractor"]  # the others were left alone


def test_ctrl_c_stops_every_child_and_exits_zero(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with running_up(tiny_checkpoint, tmp_path / "data") as own:
        children = own.pids()
        own.process.signal(signal.SIGINT)
        assert own.process.wait(timeout=60) == 0, own.log()[-3000:]
        for name, pid in children.items():
            assert not _alive(pid), f"{name} (pid {pid}) outlived the supervisor"
        assert "stopped" in own.log()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; the supervisor reaped its own children.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_up_serves_an_installed_checkpoint_and_the_cli_moves_a_head_to_it(
    up: Up, tmp_path: Path
) -> None:
    """The operator's upgrade path, README.md's "Upgrading the extractor" run as written (the
    file, `$NEW` and `$OLD` filled in): install, register, default, move every head with
    --promote, deprecate with a sunset; between register and default `headhub move` moves one
    head. Each step is checked through the API."""
    from tests.fixtures.extractor import make_tiny_checkpoint
    from tests.test_readme import upgrade_commands

    install, register, default, move_all, deprecate = upgrade_commands()
    admin = (up.data_dir / "admin_key").read_text().strip()
    as_admin = {"Authorization": f"Bearer {admin}"}

    def registry() -> dict[str, dict[str, Any]]:
        r = httpx.get(f"{up.url}/v1/extractors", headers=as_admin)
        return {e["id"]: e for e in r.json()["items"]}

    old = next(ident for ident, e in registry().items() if e["default"])
    second = make_tiny_checkpoint(tmp_path / "second.safetensors", seed=5)
    words = {"new.safetensors": str(second), "$OLD": old}

    def as_written(command: list[str]) -> list[str]:
        return [words.get(word, word) for word in command[1:]]

    # the extractor host's directory is the one `headhub up` serves
    host = {"HEADHUB_EXTRACTOR_DIR": str(up.data_dir / "extractors")}
    r = runner.invoke(cli_app, as_written(install), env=host)
    assert r.exit_code == 0, r.output
    ident = words["$NEW"] = r.output.strip().splitlines()[-1]
    assert (up.data_dir / "extractors" / f"{ident}.safetensors").read_bytes() == second.read_bytes()
    assert ident in _cli(*as_written(register), key=admin, url=up.url)
    listed = _cli("extractors", key=admin, url=up.url)
    assert ident[:12] in listed and "round 2" in listed

    _cli("tenants", "create", "mover", key=admin, url=up.url)
    owner = _cli("keys", "create", "mover", "--scope", "owner", key=admin, url=up.url)
    key = next(line for line in owner.splitlines() if line.startswith("hh_"))
    as_owner = {"Authorization": f"Bearer {key}"}
    _cli("datasets", "create", "shapes", key=key, url=up.url)
    write_dataset(str(tmp_path / "shapes"), per_label=8)
    _cli("upload", "shapes", str(tmp_path / "shapes"), key=key, url=up.url)
    for head in ("shapes", "tones"):  # both on OLD, the default still
        _cli("train", "shapes", "--head", head, "--type", "float", key=key, url=up.url)
    moved = _cli("move", "shapes", "--to", ident[:10], "--promote", key=key, url=up.url)
    assert "same validation split" in moved and "val_top1" in moved
    assert "moved: mover/shapes:2" in moved
    version = httpx.get(f"{up.url}/v1/heads/mover/shapes/versions/2", headers=as_owner).json()
    assert version["extractor_id"] == ident
    side = version["metrics"]["move"]
    assert side["promoted"] == (side["to"]["val_top1"] >= side["from"]["val_top1"])
    r = runner.invoke(cli_app, ["move", "shapes:2", "--to", ident, "--url", up.url, "--key", key])
    assert r.exit_code == 1 and "already on extractor" in r.output

    _cli(*as_written(default), key=admin, url=up.url)
    assert registry()[ident]["default"] and not registry()[old]["default"]
    bulk = _cli(*as_written(move_all), key=admin, url=up.url)  # follows the progress to the end
    progress = httpx.get(f"{up.url}/v1/extractors/{old}", headers=as_admin).json()["bulk_move"]
    assert progress["total"] >= 1 and progress["moved"] == progress["total"]
    assert (progress["failed"], progress["left"]) == (0, 0)
    assert f"moved {progress['moved']}, failed 0, left 0" in bulk
    tones = httpx.get(f"{up.url}/v1/heads/mover/tones/versions/2", headers=as_owner).json()
    assert tones["extractor_id"] == ident and tones["metrics"]["move"]["from"]["version"] == 1
    _cli(*as_written(deprecate), key=admin, url=up.url)
    assert registry()[old]["status"] == "deprecated"
    assert registry()[old]["sunset"].startswith("2027-06-30")

    def predict(head: str) -> httpx.Response:
        image = tmp_path / "shapes" / "red" / "red-000.png"
        files = [("files", (image.name, image.read_bytes(), "image/png"))]
        r = httpx.post(
            f"{up.url}/v1/predict", params={"heads": head}, files=files, headers=as_owner
        )
        assert r.status_code == 200, r.text
        return r

    still_on_old = predict("mover/tones:1")
    assert re.fullmatch(r"@\d+", still_on_old.headers["deprecation"])
    assert still_on_old.headers["sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"
    assert "deprecation" not in predict("mover/tones:2").headers
