"""The `headhub` console script (filled in by the ops work)."""

import typer

app = typer.Typer(no_args_is_help=True, help="headhub: heads on a shared frozen binary extractor")


def main() -> None:
    app()
