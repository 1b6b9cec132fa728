"""Client commands around extractors: the registry and its lifecycle, and moving heads.

`headhub extractors` lists them; its subcommands are the operator's upgrade path (register,
default, move every head, deprecate, retire) and the download for devices. `headhub move HEAD
--to ID` moves one head and prints both versions' validation metrics on the same split.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.client.http import DEFAULT_URL, ApiClient, CliError, head_ref
from service.client.jobs import follow_job
from service.client.terminal import Key, Url, cli_errors, connect, console, err_console, metric

extractors_app = typer.Typer(
    help="The feature extractors heads are pinned to: list, register, default, move, retire.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _short(extractor_id: str | None) -> str:
    return (extractor_id or "")[:12]


def _resolve(api: ApiClient, prefix: str) -> str:
    """A full id from a unique prefix of a registered one (ids are 64 hex digits)."""
    ids = [e["id"] for e in api.get("/v1/extractors")["items"]]
    matches = [i for i in ids if i.startswith(prefix.lower())]
    if len(matches) == 1:
        return str(matches[0])
    if len(prefix) == 64:
        return prefix.lower()  # not registered (yet): let the server say so
    if not matches:
        raise CliError(f"No registered extractor id starts with '{prefix}'.", status=404)
    raise CliError(f"'{prefix}' matches {len(matches)} extractors; give more of the id.")


@extractors_app.callback()
@cli_errors
def extractors(ctx: typer.Context, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """Every registered extractor: status, default, sunset and what is pinned to it."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table(
        "id", "architecture", "input", "features", "size", "status", "default", "sunset",
        "versions", "aliases", "note",
    )  # fmt: skip
    for e in connect(url, key).get("/v1/extractors")["items"]:
        table.add_row(
            _short(e["id"]),
            e["architecture"],
            "x".join(str(d) for d in e["input_size"]),
            str(e["feature_dim"]),
            f"{e['size_bytes'] / 1e6:.2f} MB",
            e["status"],
            "yes" if e["default"] else "",
            str(e.get("sunset") or "")[:10],
            str(e["pinned_versions"]),
            str(e["pinned_aliases"]),
            e.get("note") or "",
        )
    console.print(table)


@extractors_app.command("register")
@cli_errors
def register(
    extractor_id: Annotated[str, typer.Argument(metavar="ID", help="SHA-256 of the checkpoint")],
    note: Annotated[str, typer.Option(help="what it is, for the registry")] = "",
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Register a checkpoint the extractor processes serve (admin)."""
    e = connect(url, key).post("/v1/extractors", json={"id": extractor_id, "note": note})
    console.print(f"registered {e['id']} ({e['architecture']}, {e['feature_dim']} features)")


def _patch(url: str, key: str | None, prefix: str, body: dict[str, Any]) -> dict[str, Any]:
    api = connect(url, key)
    ident = _resolve(api, prefix)
    return dict(api.request("PATCH", f"/v1/extractors/{ident}", json=body).json())


@extractors_app.command("default")
@cli_errors
def make_default(
    extractor_id: Annotated[str, typer.Argument(metavar="ID", help="id or unique prefix")],
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Make an extractor the default: new jobs and uploads use it (admin)."""
    e = _patch(url, key, extractor_id, {"default": True})
    console.print(f"default extractor: {e['id']}")


@extractors_app.command("deprecate")
@cli_errors
def deprecate(
    extractor_id: Annotated[str, typer.Argument(metavar="ID", help="id or unique prefix")],
    sunset: Annotated[
        str | None, typer.Option(help="when it is to be retired, e.g. 2027-01-31")
    ] = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Deprecate an extractor: its heads still answer, with Deprecation and Sunset headers."""
    body: dict[str, Any] = {"status": "deprecated"}
    if sunset:
        body["sunset"] = sunset if "T" in sunset else f"{sunset}T00:00:00Z"
    e = _patch(url, key, extractor_id, body)
    console.print(f"deprecated {e['id']}" + (f", sunset {e['sunset']}" if e.get("sunset") else ""))


@extractors_app.command("retire")
@cli_errors
def retire(
    extractor_id: Annotated[str, typer.Argument(metavar="ID", help="id or unique prefix")],
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Retire an extractor (410 for its heads); refused while an alias still resolves to it."""
    api = connect(url, key)
    ident = _resolve(api, extractor_id)
    resp = api.http.request("PATCH", f"/v1/extractors/{ident}", json={"status": "retired"})
    if resp.status_code == 409 and resp.json().get("code") == "extractor_in_use":
        table = Table("head", "version", "through", title="still in use by")
        for h in resp.json().get("heads", []):
            table.add_row(h["head"], str(h["version"]), h["alias"] or "(no alias: newest)")
        err_console.print(table)
    if resp.status_code >= 400:
        from service.client.http import problem_message

        raise CliError(problem_message(resp), status=resp.status_code)
    console.print(f"retired {ident}")


@extractors_app.command("move")
@cli_errors
def move_all(
    extractor_id: Annotated[str, typer.Argument(metavar="FROM", help="id or unique prefix")],
    to: Annotated[str, typer.Option("--to", help="target extractor id or unique prefix")],
    promote: Annotated[
        bool, typer.Option("--promote", help="move `production` where top-1 is not lower")
    ] = False,
    wait: Annotated[bool, typer.Option(help="follow the moves until they end")] = True,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Move every head whose production (or newest) version is on FROM to --to (admin)."""
    api = connect(url, key)
    source, target = _resolve(api, extractor_id), _resolve(api, to)
    move = api.post(
        f"/v1/extractors/{source}/moves", json={"to": target, "promote_if_not_worse": promote}
    )
    err_console.print(f"{move['total']} head(s) queued to move to {_short(target)}")
    if not wait or not move["total"]:
        return
    progress = follow_bulk_move(api, source)
    console.print(
        f"moved {progress['moved']}, failed {progress['failed']}, left {progress['left']}"
    )
    for failure in progress.get("failures") or []:
        console.print(f"  {failure['head']}: {failure['error']}")


def follow_bulk_move(api: ApiClient, source: str, *, poll_s: float = 1.0) -> dict[str, Any]:
    """Poll the source extractor's bulk-move progress until no job is left."""
    columns = (
        TextColumn("[bold]moving"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
    )  # fmt: skip
    try:
        with Progress(*columns, console=err_console) as bar:
            task = bar.add_task("move", total=None, failed=0)
            while True:
                progress = api.get(f"/v1/extractors/{source}")["bulk_move"] or {}
                done = int(progress.get("moved", 0)) + int(progress.get("failed", 0))
                total = int(progress.get("total", 0))
                bar.update(task, total=total, completed=done, failed=progress.get("failed", 0))
                if not progress.get("left"):
                    return progress
                time.sleep(poll_s)
    except KeyboardInterrupt:
        raise CliError(
            "stopped following; the moves keep running (`headhub extractors`).", exit_code=130
        ) from None


@extractors_app.command("download")
@cli_errors
def download(
    extractor_id: Annotated[str, typer.Argument(metavar="ID", help="id or unique prefix")],
    output: Annotated[Path, typer.Option("-o", "--output", help="file to write")],
    format: Annotated[
        Literal["safetensors", "onnx"], typer.Option(help="safetensors | onnx")
    ] = "safetensors",
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Download an extractor for on-device features: the checkpoint, or an ONNX graph."""
    api = connect(url, key)
    ident = _resolve(api, extractor_id)
    resp = api.request("GET", f"/v1/extractors/{ident}/download", params={"format": format})
    output.write_bytes(resp.content)
    console.print(f"wrote {output} ({len(resp.content):,} bytes)")


@cli_errors
def move(
    head: Annotated[str, typer.Argument(help="owner/name, name:3 or owner/name@alias")],
    to: Annotated[str, typer.Option("--to", help="target extractor id or unique prefix")],
    promote: Annotated[
        bool,
        typer.Option("--promote", help="point `production` at it if top-1 is not lower"),
    ] = False,
    wait: Annotated[bool, typer.Option(help="follow the job until it ends")] = True,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Retrain a head on another extractor (same type, params, seed and validation split) and
    compare both versions on that split."""
    api = connect(url, key)
    ref = head_ref(head)
    target = _resolve(api, to)
    doc = api.head(ref)
    body: dict[str, Any] = {"extractor_id": target, "promote_if_not_worse": promote}
    if ref.version is not None or ref.alias is not None:
        body["from_version"] = api.head_version(ref)[1]
    job = api.post(f"/v1/heads/{doc['owner']}/{doc['name']}/moves", json=body)
    err_console.print(f"move job {job['id']} {job['status']}")
    if not wait:
        return
    job = follow_job(api, job["id"])
    if job["status"] != "succeeded":
        raise CliError(f"job {job['id']} {job['status']}: {job.get('error') or 'no error text'}")
    print_move(job)


def print_move(job: dict[str, Any]) -> None:
    """Both versions' validation metrics on the same split, side by side."""
    side = (job.get("metrics") or {}).get("move") or {}
    before, after = side.get("from") or {}, side.get("to") or {}
    ref = (job.get("head_version") or {}).get("ref", "?")
    stem = ref.rsplit(":", 1)[0]
    table = Table("", f"{stem}:{before.get('version', '?')}", ref, title="same validation split")
    table.add_row(
        "extractor", _short(before.get("extractor_id")), _short(after.get("extractor_id"))
    )
    for name in ("val_top1", "val_top5", "val_loss"):
        table.add_row(name, metric(before, name), metric(after, name))
    table.add_row("images", str(before.get("n_val", "-")), str(after.get("n_val", "-")))
    console.print(table)
    if side.get("promoted"):
        verdict = "production now points at the new version"
    elif side.get("pinned_production") is not None:
        verdict = f"production pinned at version {side['pinned_production']} (unchanged)"
    else:
        verdict = "no alias moved"
    console.print(f"moved: {ref}; {verdict}")
