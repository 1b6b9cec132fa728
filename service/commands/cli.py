"""The `headhub` console script: run the service (whole or in parts) and talk to it.

Server commands: `up` (everything, supervised), `api`, `migrate`, `worker`, `gc`; `extractor` is
mounted from its package. Client commands (`upload`, `train`, `predict`, ...) live in
`service.client`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from extractor.cli import app as extractor_app
from extractor.web.logs import configure_logging
from service import client

app = typer.Typer(
    no_args_is_help=True,
    help="headhub: per-task heads on one shared frozen binary feature extractor.",
    pretty_exceptions_show_locals=False,
)
SERVER = "Server (run the service)"


@app.command(rich_help_panel=SERVER)
def up(
    host: Annotated[str, typer.Option(help="interface for the API")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="SQLite file, blobs and secrets")] = Path(
        ".headhub"
    ),
    extractor_port: Annotated[int | None, typer.Option(help="default: port + 1")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="extractor checkpoint")] = None,
    api_workers: Annotated[
        int, typer.Option(min=1, max=64, help="API processes (headhub api --workers)")
    ] = 1,
    extractor_threads: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="extractor's torch threads; default: half the CPUs"),
    ] = None,
) -> None:
    """Everything on one machine: migrate, then extractor + API + worker, until Ctrl-C."""
    from service.commands.up import UpConfig, run_up

    code = run_up(
        UpConfig(
            host=host,
            port=port,
            data_dir=data_dir,
            extractor_port=extractor_port,
            checkpoint=checkpoint,
            api_workers=api_workers,
            extractor_threads=extractor_threads,
        )
    )
    raise typer.Exit(code)


@app.command(rich_help_panel=SERVER)
def api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="API processes on this port (uvicorn workers); they share rate limits and "
            "see each other's cache invalidations at once",
        ),
    ] = 1,
) -> None:
    """The HTTP API alone (uvicorn). SIGTERM lets in-flight requests finish, then exits."""
    import os
    import tempfile

    import uvicorn

    from service.app import create_app
    from service.http.workers import ENV as WORKERS_DIR
    from service.settings import get_settings

    settings = get_settings()
    configure_logging("api", level=settings.log_level, fmt=settings.log_format)
    common = {
        "host": host,
        "port": port,
        "log_config": None,  # keep our JSON logging
        "access_log": False,  # the observability middleware logs each request with its id
        "timeout_graceful_shutdown": int(settings.shutdown_timeout_s),
        "proxy_headers": True,
    }
    if workers == 1:
        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    # Several processes on one socket: the rate-limit buckets and the cache-invalidation counter
    # they share live in a private directory made here (service/http/workers.py).
    with tempfile.TemporaryDirectory(prefix="headhub-api-") as shared:
        os.environ[WORKERS_DIR] = shared
        uvicorn.run(
            "service.app:create_app_from_environment",
            factory=True,
            workers=workers,
            **common,  # type: ignore[arg-type]
        )


@app.command(rich_help_panel=SERVER)
def migrate() -> None:
    """Bring the database schema to the newest version (idempotent)."""
    from service.db import migrate as run_migrations
    from service.settings import get_settings

    settings = get_settings()
    run_migrations(settings.database_url)
    where = settings.database_url.split("@")[-1]  # never print a password
    typer.echo(f"database migrated: {where}")


@app.command(rich_help_panel=SERVER)
def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="jobs trained at once")] = 1,
    health_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="serve /healthz and /readyz on this port (0: none; default "
            "HEADHUB_WORKER_HEALTH_PORT)",
        ),
    ] = None,
    health_host: Annotated[str, typer.Option(help="interface of the health port")] = "0.0.0.0",
) -> None:
    """Training worker: claims queued jobs, trains heads, registers versions. SIGTERM drains."""
    from service.jobs.worker import main as run_worker
    from service.settings import get_settings

    settings = get_settings()
    configure_logging("worker", level=settings.log_level, fmt=settings.log_format)
    code = run_worker(
        settings, concurrency=concurrency, health_port=health_port, health_host=health_host
    )
    raise typer.Exit(code)


@app.command(rich_help_panel=SERVER)
def gc(
    grace_minutes: Annotated[
        float, typer.Option(min=0, help="keep blobs written more recently than this")
    ] = 60.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report, delete nothing")] = False,
) -> None:
    """Delete stored images and head files that no dataset or head version refers to."""
    from service.db import make_engine, make_sessionmaker
    from service.settings import get_settings
    from service.storage.blobstore import make_blob_store
    from service.storage.gc import collect_garbage

    settings = get_settings()
    report = collect_garbage(
        make_sessionmaker(make_engine(settings.database_url)),
        make_blob_store(settings),
        grace_s=grace_minutes * 60,
        dry_run=dry_run,
    )
    verb = "would delete" if dry_run else "deleted"
    typer.echo(
        f"{report.candidates} blobs older than {grace_minutes:g} min, "
        f"{report.unreferenced} unreferenced: {verb} {report.unreferenced} "
        f"({report.bytes_freed:,} bytes)"
    )


# `headhub extractor ...`: the extractor package owns its commands (extractor/cli.py).
app.add_typer(extractor_app, name="extractor")
client.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
