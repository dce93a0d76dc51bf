"""``threeport workers``: the live worker processes of a deployment, from their heartbeats in NATS.

Each worker process writes a heartbeat every few seconds
(:mod:`workers.heartbeats`); a stopped worker deletes its own, a killed
one's expires. This verb lists what is there: host, pid, queues, messages
in flight, readiness and how long ago each last wrote, as a table or, with
``-o json``, as JSON. An unreachable NATS is one ``error:`` line and exit code 1.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import typer
from dramatiq.errors import BrokerError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from workers import connection as nats_connection
from workers.connection import Connection, server_urls
from workers.errors import WorkersError
from workers.heartbeats import WorkerInfo, live_workers

from .queues import DEFAULT_NATS_URL, DEFAULT_PREFIX, Output

__all__ = ["list_workers"]

CONNECT_TIMEOUT = 5.0


def list_workers(
    nats_url: str = typer.Option(
        DEFAULT_NATS_URL, "--nats-url", envvar="NATS_URL", help="NATS server URL (several separated by commas)."
    ),
    prefix: str = typer.Option(
        DEFAULT_PREFIX, "--prefix", envvar="THREEPORT_PREFIX", help="Namespace of the deployment's streams."
    ),
    output: Output = typer.Option(Output.table, "--output", "-o", help="Print a table, or JSON for scripts."),
) -> None:
    """Show the live worker processes: host, pid, queues, messages in flight, last heartbeat."""
    connection = Connection(server_urls(nats_url), connect_timeout=CONNECT_TIMEOUT)
    # The connection's warnings while it retries are for long-running workers; here one line says it all.
    quiet = logging.getLogger(nats_connection.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        found = live_workers(connection, prefix)
    except (BrokerError, WorkersError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        quiet.setLevel(level)
        connection.close_sync()
    now = dt.datetime.now(dt.timezone.utc)
    if output is Output.json:
        typer.echo(json.dumps([{**w.as_dict(), "age_seconds": round(w.age(now), 3)} for w in found], indent=2))
    elif not found:
        Console().print(f"No live workers under prefix {escape(repr(prefix))}.")
    else:
        _print(_table(found, now))


def _table(found: list[WorkerInfo], now: dt.datetime) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for header in ("WORKER", "HOST", "PID", "QUEUES", "IN FLIGHT", "READY", "STATE", "LAST HEARTBEAT", "VERSION"):
        table.add_column(header, no_wrap=True, justify="right" if header in ("PID", "IN FLIGHT") else "left")
    for w in found:
        cells = (
            w.id,
            w.host,
            str(w.pid),
            ",".join(w.queues) or "-",
            str(w.in_flight),
            "yes" if w.ready else "no",
            w.state,
            f"{w.age(now):.0f}s ago",
            w.version,
        )
        table.add_row(*map(Text, cells))
    return table


def _print(table: Table) -> None:
    # One line per row, as `threeport queues` prints: a narrow terminal wraps lines rather than cells.
    console = Console()
    natural = console.measure(table, options=console.options.update_width(10_000)).maximum
    console.width = max(console.width, natural)
    console.print(table)
