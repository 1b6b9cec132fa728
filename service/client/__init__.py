"""The client half of the `headhub` command: the tenant journey over HTTP, with progress bars.

Every command takes `--url`/`--key` (or HEADHUB_URL / HEADHUB_KEY). Any failure prints the
server's problem detail sentence and exits 1. `http` is the one HTTP client, `terminal` what the
commands share; `tenants`, `datasets`, `jobs` and `heads` hold the commands by domain.
"""

from __future__ import annotations

import typer

PANEL = "Client (talks to a running API)"


def register(app: typer.Typer) -> None:
    """Mount every client command on the `headhub` app."""
    from service.client import datasets, extractors, heads, jobs, tenants

    app.add_typer(tenants.tenants_app, name="tenants", rich_help_panel=PANEL)
    app.add_typer(extractors.extractors_app, name="extractors", rich_help_panel=PANEL)
    app.add_typer(tenants.keys_app, name="keys", rich_help_panel=PANEL)
    app.add_typer(datasets.datasets_app, name="datasets", rich_help_panel=PANEL)
    for fn, name in (
        (datasets.upload, "upload"),
        (jobs.train, "train"),
        (jobs.jobs, "jobs"),
        (heads.heads, "heads"),
        (heads.alias, "alias"),
        (heads.publish, "publish"),
        (heads.marketplace, "marketplace"),
        (heads.predict, "predict"),
        (heads.export, "export"),
        (extractors.move, "move"),
    ):
        app.command(name, rich_help_panel=PANEL)(fn)
