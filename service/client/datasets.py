"""Client commands around datasets: create, list, and the resumable folder upload."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from service.client import upload as upload_files
from service.client.http import DEFAULT_URL, CliError
from service.client.terminal import (
    Key,
    Url,
    cli_errors,
    connect,
    console,
    err_console,
    styled,
)

datasets_app = typer.Typer(no_args_is_help=True, help="Datasets of your tenant.")


@datasets_app.command("create")
@cli_errors
def datasets_create(
    name: str, description: str = "", url: Url = DEFAULT_URL, key: Key = None
) -> None:
    """Create a dataset."""
    ds = connect(url, key).post("/v1/datasets", json={"name": name, "description": description})
    console.print(styled("created dataset ", (ds["name"], "bold"), f" ({ds['id']})"))


@datasets_app.command("list")
@cli_errors
def datasets_list(url: Url = DEFAULT_URL, key: Key = None) -> None:
    """List your datasets with image counts per label."""
    table = Table("name", "id", "images", "labels")
    for ds in connect(url, key).items("/v1/datasets"):
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
    api = connect(url, key)
    try:
        images, ignored = upload_files.scan(directory)
    except FileNotFoundError as e:
        raise CliError(str(e)) from None
    if not images:
        raise CliError(f"No images found in label folders under {directory}.")
    ds = api.dataset(dataset)
    manifest = upload_files.Manifest(
        upload_files.manifest_path(api.url, ds["id"]) if resume else None
    )
    total_bytes = sum(i.size for i in images)
    columns = (
        TextColumn("upload", style="bold", markup=False),
        BarColumn(),
        TextColumn("{task.fields[files]}", markup=False),
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

        report = upload_files.upload(
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
