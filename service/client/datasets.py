"""Client commands for people at a terminal: the tenant journey over HTTP, with progress bars.

Every command takes `--url`/`--key` (or HEADHUB_URL / HEADHUB_KEY). Any failure prints the
server's problem detail sentence and exits 1.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from service import client_upload
from service.client_http import DEFAULT_URL, ApiClient, CliError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

Url = Annotated[str, typer.Option("--url", envvar="HEADHUB_URL", help="API base URL.")]
Key = Annotated[
    str | None,
    typer.Option("--key", envvar="HEADHUB_KEY", help="Bearer API key.", show_default=False),
]

# Tests swap this for a factory returning FastAPI's TestClient.
http_factory: Callable[[str], httpx.Client] | None = None


def _api(url: str, key: str | None) -> ApiClient:
    http = http_factory(url) if http_factory is not None else None
    return ApiClient(url, key, http=http)


def cli_errors(fn: F) -> F:
    """Turn a `CliError` into its sentence on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CliError as e:
            err_console.print(f"[bold red]error:[/] {e.message}", highlight=False)
            raise typer.Exit(e.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _metric(metrics: dict[str, Any] | None, key: str) -> str:
    v = (metrics or {}).get(key)
    return f"{v:.3f}" if isinstance(v, int | float) else "-"


tenants_app = typer.Typer(no_args_is_help=True, help="Tenants (admin key).")
keys_app = typer.Typer(no_args_is_help=True, help="API keys of a tenant.")
datasets_app = typer.Typer(no_args_is_help=True, help="Datasets of your tenant.")


@tenants_app.command("create")
@cli_errors
def tenants_create(name: str, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """Create a tenant (needs the admin key)."""
    t = _api(url, key).post("/v1/tenants", json={"name": name})
    console.print(f"created tenant [bold]{t['name']}[/] ({t['id']})")


@tenants_app.command("list")
@cli_errors
def tenants_list(url: Url = DEFAULT_URL, key: Key = None) -> None:
    """List tenants (needs the admin key)."""
    table = Table("name", "id", "created")
    for t in _api(url, key).items("/v1/tenants"):
        table.add_row(t["name"], t["id"], str(t.get("created_at", "")))
    console.print(table)


@keys_app.command("create")
@cli_errors
def keys_create(
    tenant: str,
    scope: Annotated[str, typer.Option(help="owner or predict")] = "owner",
    name: Annotated[str, typer.Option(help="a label for the key")] = "cli",
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Create an API key; the key is printed once and never again."""
    k = _api(url, key).post(f"/v1/tenants/{tenant}/keys", json={"scope": scope, "name": name})
    err_console.print(f"created {k['scope']} key {k['id']} for {tenant}; store it now:")
    console.print(k["key"], highlight=False)


@keys_app.command("revoke")
@cli_errors
def keys_revoke(tenant: str, key_id: str, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """Revoke a key at once."""
    _api(url, key).request("DELETE", f"/v1/tenants/{tenant}/keys/{key_id}")
    console.print(f"revoked key {key_id}")


@datasets_app.command("create")
@cli_errors
def datasets_create(
    name: str, description: str = "", url: Url = DEFAULT_URL, key: Key = None
) -> None:
    """Create a dataset."""
    ds = _api(url, key).post("/v1/datasets", json={"name": name, "description": description})
    console.print(f"created dataset [bold]{ds['name']}[/] ({ds['id']})")


@datasets_app.command("list")
@cli_errors
def datasets_list(url: Url = DEFAULT_URL, key: Key = None) -> None:
    """List your datasets with image counts per label."""
    table = Table("name", "id", "images", "labels")
    for ds in _api(url, key).items("/v1/datasets"):
        counts = ds.get("label_counts") or {}
        table.add_row(
            ds["name"],
            ds["id"],
            str(ds.get("image_count", "")),
            ", ".join(f"{k}={v}" for k, v in sorted(counts.items())),
        )
    console.print(table)


@cli_errors
def upload(
    dataset: Annotated[str, typer.Argument(help="dataset name or id")],
    directory: Annotated[Path, typer.Argument(help="one sub-folder per label")],
    batch_files: Annotated[int, typer.Option(help="files per request")] = 32,
    batch_mb: Annotated[float, typer.Option(help="MiB per request")] = 8.0,
    resume: Annotated[bool, typer.Option(help="skip files this machine already sent")] = True,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Upload a folder-per-label image tree; re-running resumes where it stopped."""
    api = _api(url, key)
    try:
        images, ignored = client_upload.scan(directory)
    except FileNotFoundError as e:
        raise CliError(str(e)) from None
    if not images:
        raise CliError(f"No images found in label folders under {directory}.")
    ds = api.dataset(dataset)
    manifest = client_upload.Manifest(
        client_upload.manifest_path(api.url, ds["id"]) if resume else None
    )
    total_bytes = sum(i.size for i in images)
    columns = (
        TextColumn("[bold]upload"),
        BarColumn(),
        TextColumn("{task.fields[files]}"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console) as progress:
        task = progress.add_task("upload", total=total_bytes, files=f"0/{len(images)} files")
        done = [0]

        def advance(files: int, nbytes: int) -> None:
            done[0] += files
            progress.update(task, advance=nbytes, files=f"{done[0]}/{len(images)} files")

        report = client_upload.upload(
            api,
            ds["id"],
            images,
            manifest,
            max_files=batch_files,
            max_bytes=int(batch_mb * 1024 * 1024),
            on_progress=advance,
        )
    console.print(
        f"added {report.added}, duplicates {report.duplicates}, "
        f"skipped (sent before) {report.skipped}, rejected {len(report.rejected)}, "
        f"ignored non-images {len(ignored)}"
    )
    if report.rejected:
        table = Table("label", "file", "reason", title="rejected")
        for r in report.rejected:
            table.add_row(r["label"], r["filename"], r["reason"])
        err_console.print(table)


TERMINAL = {"succeeded", "failed", "cancelled"}


@cli_errors
def train(
    dataset: Annotated[str, typer.Argument(help="dataset name or id")],
    head: Annotated[str, typer.Option("--head", help="head name to create a version of")],
    head_type: Annotated[
        Literal["float", "binary", "mlp"], typer.Option("--type", help="float | binary | mlp")
    ] = "float",
    validation_fraction: float = 0.2,
    seed: int = 0,
    param: Annotated[list[str] | None, typer.Option(help="trainer param key=value")] = None,
    wait: Annotated[bool, typer.Option(help="follow the job until it ends")] = True,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Start a training job and follow it with a live progress bar."""
    api = _api(url, key)
    ds = api.dataset(dataset)
    params: dict[str, Any] = {}
    for kv in param or []:
        k, sep, v = kv.partition("=")
        if not sep:
            raise CliError(f"--param '{kv}' is not key=value.")
        params[k] = _number(v)
    job = api.post(
        "/v1/jobs",
        headers={"Idempotency-Key": uuid.uuid4().hex},
        json={
            "dataset_id": ds["id"],
            "head": head,
            "head_type": head_type,
            "validation_fraction": validation_fraction,
            "seed": seed,
            "params": params,
        },
    )
    err_console.print(f"job {job['id']} {job['status']}")
    if wait:
        job = follow_job(api, job["id"])
        _print_job_result(job)


def _number(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def follow_job(api: ApiClient, job_id: str, *, poll_s: float = 1.0) -> dict[str, Any]:
    """Poll the job until it ends; Ctrl-C leaves it running on the server."""
    columns = (
        TextColumn("[bold]{task.fields[status]}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=err_console) as progress:
            task = progress.add_task("train", total=100, status="queued", acc="")
            while True:
                job = api.get(f"/v1/jobs/{job_id}")
                acc = _live_accuracy(job.get("metrics"))
                progress.update(
                    task,
                    completed=100 * float(job.get("progress") or 0.0),
                    status=job["status"],
                    acc=f"val_top1 {acc}",
                )
                if job["status"] in TERMINAL:
                    return job  # type: ignore[no-any-return]
                time.sleep(poll_s)
    except KeyboardInterrupt:
        raise CliError(
            f"stopped following; job {job_id} keeps running (`headhub jobs`).", exit_code=130
        ) from None


def _live_accuracy(metrics: dict[str, Any] | None) -> str:
    """The final val_top1 once known, else the newest epoch's from the training history."""
    metrics = metrics or {}
    if isinstance(metrics.get("val_top1"), int | float):
        return _metric(metrics, "val_top1")
    history = [h for h in metrics.get("history") or [] if isinstance(h, dict)]
    return _metric(history[-1], "val_top1") if history else "-"


def _print_job_result(job: dict[str, Any]) -> None:
    if job["status"] != "succeeded":
        raise CliError(f"job {job['id']} {job['status']}: {job.get('error') or 'no error text'}")
    ref = (job.get("head_version") or {}).get("ref", "?")
    m = job.get("metrics") or {}
    console.print(
        f"trained [bold]{ref}[/]: val_top1 {_metric(m, 'val_top1')}, "
        f"val_top5 {_metric(m, 'val_top5')}"
    )


@cli_errors
def jobs(status: str | None = None, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """List your training jobs."""
    table = Table("id", "status", "progress", "attempt", "val_top1", "head version", "error")
    for j in _api(url, key).items("/v1/jobs", {"status": status}):
        table.add_row(
            j["id"],
            j["status"],
            f"{100 * float(j.get('progress') or 0):.0f}%",
            str(j.get("attempt", "")),
            _metric(j.get("metrics"), "val_top1"),
            (j.get("head_version") or {}).get("ref", ""),
            j.get("error") or "",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Mount every client command on the `headhub` app."""
    from service import client_heads as h

    panel = "Client (talks to a running API)"
    app.add_typer(tenants_app, name="tenants", rich_help_panel=panel)
    app.add_typer(keys_app, name="keys", rich_help_panel=panel)
    app.add_typer(datasets_app, name="datasets", rich_help_panel=panel)
    for fn, name in (
        (upload, "upload"),
        (train, "train"),
        (jobs, "jobs"),
        (h.heads, "heads"),
        (h.alias, "alias"),
        (h.publish, "publish"),
        (h.marketplace, "marketplace"),
        (h.predict, "predict"),
        (h.export, "export"),
    ):
        app.command(name, rich_help_panel=panel)(fn)
