"""Client commands of the platform admin: tenants and their API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from service.client.http import DEFAULT_URL
from service.client.terminal import (
    Key,
    Url,
    cli_errors,
    connect,
    console,
    err_console,
    styled,
)

tenants_app = typer.Typer(no_args_is_help=True, help="Tenants (admin key).")
keys_app = typer.Typer(no_args_is_help=True, help="API keys of a tenant.")


@tenants_app.command("create")
@cli_errors
def tenants_create(name: str, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """Create a tenant (needs the admin key)."""
    t = connect(url, key).post("/v1/tenants", json={"name": name})
    console.print(styled("created tenant ", (t["name"], "bold"), f" ({t['id']})"))


@tenants_app.command("list")
@cli_errors
def tenants_list(url: Url = DEFAULT_URL, key: Key = None) -> None:
    """List tenants (needs the admin key)."""
    table = Table("name", "id", "created")
    for t in connect(url, key).items("/v1/tenants"):
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
    k = connect(url, key).post(f"/v1/tenants/{tenant}/keys", json={"scope": scope, "name": name})
    err_console.print(f"created {k['scope']} key {k['id']} for {tenant}; store it now:")
    console.print(k["key"], highlight=False)


@keys_app.command("revoke")
@cli_errors
def keys_revoke(tenant: str, key_id: str, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """Revoke a key at once."""
    connect(url, key).request("DELETE", f"/v1/tenants/{tenant}/keys/{key_id}")
    console.print(f"revoked key {key_id}")
