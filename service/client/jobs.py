"""Client commands around training: start a job and follow it live, list jobs."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.client.http import DEFAULT_URL, ApiClient, CliError
from service.client.terminal import (
    Key,
    Url,
    cli_errors,
    connect,
    console,
    err_console,
    metric,
    printable,
    styled,
)

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
    api = connect(url, key)
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
        TextColumn("{task.fields[status]}", style="bold", markup=False),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[acc]}", markup=False),
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
                    status=printable(job["status"]),
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
        return metric(metrics, "val_top1")
    history = [h for h in metrics.get("history") or [] if isinstance(h, dict)]
    return metric(history[-1], "val_top1") if history else "-"


def _print_job_result(job: dict[str, Any]) -> None:
    if job["status"] != "succeeded":
        raise CliError(f"job {job['id']} {job['status']}: {job.get('error') or 'no error text'}")
    ref = (job.get("head_version") or {}).get("ref", "?")
    m = job.get("metrics") or {}
    console.print(
        styled(
            "trained ",
            (ref, "bold"),
            f": val_top1 {metric(m, 'val_top1')}, val_top5 {metric(m, 'val_top5')}",
        )
    )


@cli_errors
def jobs(status: str | None = None, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """List your training jobs."""
    table = Table("id", "status", "progress", "attempt", "val_top1", "head version", "error")
    for j in connect(url, key).items("/v1/jobs", {"status": status}):
        table.add_row(
            j["id"],
            j["status"],
            f"{100 * float(j.get('progress') or 0):.0f}%",
            str(j.get("attempt", "")),
            metric(j.get("metrics"), "val_top1"),
            (j.get("head_version") or {}).get("ref", ""),
            j.get("error") or "",
        )
    console.print(table)
