"""``threeport migrate``: bring the database schema up to date (safe to run from many processes)."""

from __future__ import annotations

import peewee
import typer
from rich.console import Console
from rich.markup import escape

from models import StoreError, database_from_url, migrate
from models.database import redact_message, redact_url


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
        _fail(redact_message(str(exc), database_url))
    except peewee.DatabaseError as exc:  # could not connect: the driver's reason, without the password
        reason = " ".join(str(exc).split()) or type(exc).__name__
        _fail(f"cannot connect to {redact_url(database_url)}: {redact_message(reason, database_url)}")
    target = redact_url(database_url)
    if applied:
        console.print(f"Applied {', '.join(applied)} to {target}.")
    else:
        console.print(f"{target} is up to date.")
    database.close_all()


def _fail(message: str) -> None:
    Console(stderr=True, highlight=False).print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)
