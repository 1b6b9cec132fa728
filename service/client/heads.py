"""Client commands around heads: registry tables, aliases, publishing, predicting, exporting."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from service.client.http import DEFAULT_URL, CliError, head_ref
from service.client.terminal import Key, Url, cli_errors, connect, console, metric, size

PREDICT_BATCH = 16  # images per /v1/predict request


@cli_errors
def heads(
    ref: Annotated[str | None, typer.Argument(help="owner/name for one head's versions")] = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Your heads, or one head's versions, aliases and metrics."""
    api = connect(url, key)
    if ref is None:
        table = Table("head", "visibility", "versions", "latest", "aliases", "uses", "description")
        for h in api.items("/v1/heads"):
            table.add_row(
                f"{h['owner']}/{h['name']}",
                h.get("visibility", "") + (" (suspended)" if h.get("suspended") else ""),
                str(h.get("version_count", "")),
                str(h.get("latest_version") or "-"),
                _aliases(h.get("aliases")),
                str(h.get("usage_count", "")),
                h.get("description") or "",
            )
        console.print(table)
        return
    head = api.head(head_ref(ref))
    by_version: dict[int, list[str]] = {}
    for alias, v in (head.get("aliases") or {}).items():
        by_version.setdefault(int(v), []).append(alias)
    title = f"{head['owner']}/{head['name']} ({head.get('visibility', '')})"
    table = Table(
        "version",
        "type",
        "labels",
        "val_top1",
        "val_top5",
        "size",
        "aliases",
        "created",
        title=title,
    )
    for v in sorted(head.get("versions") or [], key=lambda v: int(v["version"])):
        m = v.get("metrics") or {}
        table.add_row(
            str(v["version"]),
            v.get("head_type", ""),
            str(len(v.get("labels") or [])),
            metric(m, "val_top1"),
            metric(m, "val_top5"),
            size(v.get("size_bytes")),
            ", ".join(sorted(by_version.get(int(v["version"]), []))),
            str(v.get("created_at", ""))[:19],
        )
    console.print(table)


def _aliases(aliases: dict[str, int] | None) -> str:
    return ", ".join(f"{a}->{v}" for a, v in sorted((aliases or {}).items()))


@cli_errors
def alias(
    ref: str,
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS")],
    version: int,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Point ALIAS (e.g. production) of a head at VERSION."""
    api = connect(url, key)
    head = api.head(head_ref(ref))
    api.request(
        "PUT",
        f"/v1/heads/{head['owner']}/{head['name']}/aliases/{alias_name}",
        json={"version": version},
    )
    console.print(f"{head['owner']}/{head['name']}@{alias_name} -> {version}")


@cli_errors
def publish(
    ref: str,
    description: Annotated[str | None, typer.Option()] = None,
    private: Annotated[bool, typer.Option(help="unpublish instead")] = False,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Make a head public in the marketplace (or private again with --private)."""
    api = connect(url, key)
    head = api.head(head_ref(ref))
    body: dict[str, Any] = {"visibility": "private" if private else "public"}
    if description is not None:
        body["description"] = description
    api.request("PATCH", f"/v1/heads/{head['owner']}/{head['name']}", json=body)
    console.print(f"{head['owner']}/{head['name']} is now {body['visibility']}")


@cli_errors
def marketplace(
    q: Annotated[str | None, typer.Option("-q", "--query")] = None,
    label: str | None = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Browse public heads of all tenants."""
    table = Table("head", "labels", "best val_top1", "versions", "uses", "description")
    for h in connect(url, key).items("/v1/marketplace", {"q": q, "label": label}):
        labels = h.get("labels") or []
        shown = ", ".join(labels[:6]) + (f" (+{len(labels) - 6})" if len(labels) > 6 else "")
        best = h.get("best_metrics") or h.get("metrics")
        versions = h.get("versions")
        table.add_row(
            f"{h['owner']}/{h['name']}",
            shown,
            metric(best, "val_top1"),
            str(len(versions) if isinstance(versions, list) else versions or ""),
            str(h.get("usage_count", "")),
            h.get("description") or "",
        )
    console.print(table)


@cli_errors
def predict(
    images: Annotated[list[Path], typer.Argument(help="image files")],
    head: Annotated[list[str], typer.Option("--head", help="head ref; repeat for several")],
    top_k: Annotated[int, typer.Option("--top-k")] = 5,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Classify images with one or more heads: a table of the top-k labels."""
    api = connect(url, key)
    for ref in head:
        head_ref(ref)  # fail fast on a typo, before reading images
    table = Table("file", "head", "label", "score")
    for start in range(0, len(images), PREDICT_BATCH):
        chunk = images[start : start + PREDICT_BATCH]
        files = []
        for p in chunk:
            try:
                files.append(("files", (p.name, p.read_bytes(), "application/octet-stream")))
            except OSError as e:
                raise CliError(f"Cannot read {p}: {e.strerror}.") from None
        body = api.post(
            "/v1/predict", params={"heads": ",".join(head), "top_k": top_k}, files=files
        )
        for result in body["results"]:
            for resolved, preds in result["predictions"].items():
                for i, p in enumerate(preds):
                    table.add_row(
                        result["filename"] if i == 0 else "",
                        resolved if i == 0 else "",
                        p["label"],
                        f"{p['score']:.4f}",
                    )
    console.print(table)


@cli_errors
def export(
    ref: str,
    fmt: Annotated[Literal["safetensors", "onnx"], typer.Option("--format")] = "safetensors",
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Download one head version as safetensors or ONNX, for on-device use."""
    api = connect(url, key)
    head, version = api.head_version(head_ref(ref))
    out = output or Path(f"{head['name']}-v{version}.{fmt}")
    resp = api.request(
        "GET",
        f"/v1/heads/{head['owner']}/{head['name']}/versions/{version}/export",
        params={"format": fmt},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(resp.content)
    os.replace(tmp, out)  # never a half-written file under the final name
    console.print(
        f"wrote {head['owner']}/{head['name']}:{version} ({fmt}, "
        f"{size(len(resp.content))}) to {out}"
    )
