"""docker-compose.yml validates, and every service runs a command the `headhub` CLI accepts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from service.commands.cli import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
SECRETS = {
    "POSTGRES_PASSWORD": "pw",
    "HEADHUB_ADMIN_KEY": "k" * 40,
    "HEADHUB_KEY_PEPPER": "p",
    "MINIO_ROOT_PASSWORD": "m" * 16,
}
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed")


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [COMPOSE, "-f", str(ROOT / "docker-compose.yml"), *args],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    if COMPOSE is None:
        pytest.skip("docker-compose is not installed")
    out = _compose("config", env=SECRETS)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)  # type: ignore[no-any-return]


@needs_compose
def test_compose_file_validates() -> None:
    out = _compose("config", "-q", env=SECRETS)
    assert out.returncode == 0, out.stderr


@needs_compose
def test_compose_refuses_to_start_without_secrets() -> None:
    out = _compose("config", "-q", env={})
    assert out.returncode != 0
    assert "POSTGRES_PASSWORD" in out.stderr or "HEADHUB_" in out.stderr


def test_production_shape(config: dict[str, Any]) -> None:
    services = config["services"]
    extractors = [
        n for n, s in services.items() if s.get("command", [None])[:2] == ["extractor", "serve"]
    ]
    workers = [n for n, s in services.items() if s.get("command", [None])[0] == "worker"]
    assert len(extractors) == 2 and len(workers) == 2
    api_env = services["api"]["environment"]
    assert api_env["HEADHUB_EXTRACTOR_URLS"].split(",") == [f"http://{n}:8001" for n in extractors]
    assert api_env["HEADHUB_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert services["migrate"]["command"] == ["migrate"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert "pgdata" in config["volumes"] and "blobs" not in config["volumes"]
    for name in ["api", *workers]:  # blobs in the object store, limits in Redis: no shared disk
        env = services[name]["environment"]
        assert env["HEADHUB_BLOB_URL"].startswith("s3://") and not services[name].get("volumes")
        assert env["HEADHUB_S3_SECRET_ACCESS_KEY"] == SECRETS["MINIO_ROOT_PASSWORD"]
        assert services[name]["depends_on"]["minio-init"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["api"]["environment"]["HEADHUB_REDIS_URL"] == "redis://redis:6379/0"
    for name in ["api", *extractors, *workers]:
        assert "test" in services[name]["healthcheck"], name


# typer vendors its own click: take its exception base from a public typer class.
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class UnknownCommand(LookupError):
    def format_message(self) -> str:
        return str(self)


def _resolve(args: list[str]) -> None:
    """Parse `args` through the real CLI without running it; raises if a command or option is
    unknown or a value does not parse."""
    cmd: Any = typer.main.get_command(app)
    ctx = cmd.make_context("headhub", [], resilient_parsing=True)
    while hasattr(cmd, "get_command"):  # a group: descend one word
        if not args:
            raise UnknownCommand("a group, not a command")
        name, args = args[0], args[1:]
        sub = cmd.get_command(ctx, name)
        if sub is None:
            raise UnknownCommand(f"no command {name!r}")
        cmd = sub
        ctx = cmd.make_context(name, [], parent=ctx, resilient_parsing=True)
    cmd.make_context(cmd.name or "", list(args), parent=ctx.parent)


def test_every_headhub_service_command_exists_in_the_cli(config: dict[str, Any]) -> None:
    commands = {
        n: s["command"]
        for n, s in config["services"].items()
        if s.get("image", "").startswith("headhub")
    }
    assert set(commands) >= {"migrate", "api", "extractor-1", "worker-1"}
    for name, command in commands.items():
        try:
            _resolve(list(command))
        except (ClickException, UnknownCommand) as e:
            pytest.fail(f"service {name}: `headhub {' '.join(command)}`: {e.format_message()}")


def test_cli_resolver_rejects_unknown_commands_and_options() -> None:
    with pytest.raises(UnknownCommand):
        _resolve(["no-such-command"])
    with pytest.raises(ClickException):
        _resolve(["api", "--no-such-option", "1"])
    with pytest.raises(ClickException):
        _resolve(["api", "--port", "not-a-number"])
    _resolve(["api", "--host", "0.0.0.0", "--port", "8000"])


def test_dockerfile_runs_as_non_root_with_a_healthcheck_and_pinned_cpu_torch() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "\nUSER headhub" in text
    assert "HEALTHCHECK" in text
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text


# --- static: the file itself, without docker-compose (PyYAML resolves the `<<` merges) --------

_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+):\?[^}]*\}")
# Variables the image reads that are not settings (the Dockerfile's HEALTHCHECK).
NOT_SETTINGS = {"HEADHUB_HEALTH_URL"}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def _env(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment with `${VAR:?...}` filled from SECRETS."""
    return {
        k: _PLACEHOLDER.sub(lambda m: SECRETS[m.group(1)], str(v))
        for k, v in (service.get("environment") or {}).items()
    }


def test_every_headhub_variable_is_a_setting_and_parses(raw: dict[str, Any]) -> None:
    from service.settings import Settings

    for name, service in raw["services"].items():
        env = {k: v for k, v in _env(service).items() if k.startswith("HEADHUB_")}
        unknown = {
            k for k in env if k.removeprefix("HEADHUB_").lower() not in Settings.model_fields
        }
        assert unknown <= NOT_SETTINGS, (name, unknown)
        if env:
            kwargs = {
                k.removeprefix("HEADHUB_").lower(): v
                for k, v in env.items()
                if k not in NOT_SETTINGS
            }
            Settings(**kwargs)  # every value parses (a misspelt literal fails here)


def test_each_worker_healthcheck_reads_its_own_probe_port(raw: dict[str, Any]) -> None:
    from service.settings import Settings

    workers = {
        n: s for n, s in raw["services"].items() if (s.get("command") or [""])[0] == "worker"
    }
    assert workers
    for name, service in workers.items():
        port = Settings(
            worker_health_port=_env(service)["HEADHUB_WORKER_HEALTH_PORT"]
        ).worker_health_port
        assert port, f"{name}: no probe server"
        test = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/healthz" in test, name


def test_blobs_live_in_the_object_store_and_limits_in_redis(raw: dict[str, Any]) -> None:
    from service.settings import Settings
    from service.storage.blobstore import make_blob_store
    from service.storage.s3 import S3BlobStore

    services = raw["services"]
    assert "blobs" not in (raw.get("volumes") or {})  # no blob volume any more
    minio, redis = services["minio"], services["redis"]
    assert "healthcheck" in minio and "healthcheck" in redis
    users = [n for n, s in services.items() if (s.get("command") or [""])[0] in {"api", "worker"}]
    assert sorted(users) == ["api", "worker-1", "worker-2"]
    for name in users:
        service, env = services[name], _env(services[name])
        assert not service.get("volumes"), f"{name} mounts a volume: hosts would share a disk"
        assert env["HEADHUB_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["HEADHUB_S3_SECRET_ACCESS_KEY"] == SECRETS["MINIO_ROOT_PASSWORD"]
        assert env["HEADHUB_S3_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"]
        assert env["HEADHUB_REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
        kwargs = {k.removeprefix("HEADHUB_").lower(): v for k, v in env.items()}
        store = make_blob_store(Settings(**kwargs))
        assert isinstance(store, S3BlobStore)
        # The bucket the store writes to is the one minio-init makes.
        assert f"local/{store.location.bucket}" in " ".join(services["minio-init"]["command"])
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    # The extractors get neither the object store's secret nor Redis.
    for service in services.values():
        if (service.get("command") or [""])[:2] == ["extractor", "serve"]:
            assert not {"HEADHUB_S3_SECRET_ACCESS_KEY", "HEADHUB_REDIS_URL"} & set(_env(service))


def test_each_process_gets_only_the_secrets_it_uses(raw: dict[str, Any]) -> None:
    """The extractors read no database, check no key and touch no blob: a compromised extractor
    must not hold the database password, the admin key or the pepper (docs/threats.md)."""
    secrets = {
        "HEADHUB_DATABASE_URL",
        "HEADHUB_ADMIN_KEY",
        "HEADHUB_KEY_PEPPER",
        "HEADHUB_S3_SECRET_ACCESS_KEY",
        "HEADHUB_REDIS_URL",
    }
    allowed = {
        "extractor": set(),
        "migrate": {"HEADHUB_DATABASE_URL"},
        "worker": {"HEADHUB_DATABASE_URL", "HEADHUB_S3_SECRET_ACCESS_KEY", "HEADHUB_REDIS_URL"},
        "api": secrets,
    }
    seen = set()
    for name, service in raw["services"].items():
        command = (service.get("command") or [""])[0]
        if command not in allowed:
            continue
        seen.add(command)
        held = secrets & set(_env(service))
        assert held == allowed[command], (name, held)
    assert seen == set(allowed)
