"""``threeport migrate``: bring the database schema up to date (safe to run from many processes)."""

from __future__ import annotations

import typer
from rich.console import Console

from models import StoreError, database_from_url, migrate
from models.database import redact_url


def run(
    database_url: str = typer.Option(
        "postgresql://postgres@127.0.0.1:5432/threeport", envvar="DATABASE_URL", help="The database to migrate."
    ),
) -> None:
    """Apply the schema migrations the database does not have yet."""
    console = Console()
    try:
        database = database_from_url(database_url)
        applied = migrate(database)
    except StoreError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    target = redact_url(database_url)
    if applied:
        console.print(f"Applied {', '.join(applied)} to {target}.")
    else:
        console.print(f"{target} is up to date.")
    database.close_all()
