"""``threeport queues``: inspect and repair the work queues from a terminal.

Every verb is a thin view over :class:`workers.admin.QueueAdmin`, whose broker
is built only when a verb first needs it (so ``--help`` and usage errors never
touch the network) and closed when the command ends. Failures an operator can
fix, NATS unreachable, JetStream refusing, or a queue name that is invalid or
names no queue, become one ``error:`` line on stderr and exit code 1; results
print as a table, or with ``-o json`` as JSON.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from contextlib import contextmanager
from enum import Enum
from typing import Any, Iterator, Optional

import typer
from dramatiq.errors import BrokerError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from workers import connection
from workers.admin import QueueAdmin, RetryReport
from workers.broker import JetStreamBroker, QueueStats
from workers.dead_letters import DeadLetter
from workers.errors import WorkersError
from workers.replicas import DEFAULT_REPLICAS
from workers.replicas import ENV_VAR as REPLICAS_ENV

__all__ = ["app"]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_PREFIX = "threeport"
CONNECT_TIMEOUT = 5.0
#: Characters of a dead letter's error, and of its arguments, shown in a table (JSON shows all).
ERROR_WIDTH = 60
ARGS_WIDTH = 40
#: Table header -> QueueStats field, in display order.
STATS_COLUMNS = {
    "QUEUE": "queue",
    "READY": "ready",
    "DELAYED": "delayed",
    "IN FLIGHT": "in_flight",
    "REDELIVERED": "redelivered",
    "DEAD": "dead",
    "CONSUMERS": "consumers",
}

app = typer.Typer()


class Output(str, Enum):
    """How results are printed."""

    table = "table"
    json = "json"


class Session:
    """Where the queues live, and a broker to them opened only when a verb needs it."""

    def __init__(self, *, nats_url: str, prefix: str, output: Output, replicas: int = DEFAULT_REPLICAS) -> None:
        self.nats_url = nats_url
        self.prefix = prefix
        self.replicas = replicas
        self.output = output
        self._admin: Optional[QueueAdmin] = None

    @property
    def wants_json(self) -> bool:
        return self.output is Output.json

    @property
    def admin(self) -> QueueAdmin:
        if self._admin is None:
            broker = JetStreamBroker(
                self.nats_url, prefix=self.prefix, replicas=self.replicas, connect_timeout=CONNECT_TIMEOUT
            )
            self._admin = QueueAdmin(broker)
        return self._admin

    def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.broker.close()


# Verbs ---------------------------------------------------------------------------------
@app.callback(invoke_without_command=True)
def queues(
    ctx: typer.Context,
    nats_url: str = typer.Option(
        DEFAULT_NATS_URL, "--nats-url", envvar="NATS_URL", help="NATS server URL (several separated by commas)."
    ),
    prefix: str = typer.Option(
        DEFAULT_PREFIX, "--prefix", envvar="THREEPORT_PREFIX", help="Namespace of the deployment's streams."
    ),
    output: Output = typer.Option(Output.table, "--output", "-o", help="Print a table, or JSON for scripts."),
    nats_replicas: int = typer.Option(
        DEFAULT_REPLICAS,
        "--nats-replicas",
        envvar=REPLICAS_ENV,
        min=1,
        help="Replicas of a queue stream a retry has to create (3 on a 3-node JetStream cluster).",
    ),
) -> None:
    """Inspect and repair the work queues; without a command, list them."""
    session = Session(nats_url=nats_url, prefix=prefix, output=output, replicas=nats_replicas)
    ctx.obj = session
    ctx.with_resource(_reconnect_warnings_hidden())
    ctx.call_on_close(session.close)
    if ctx.invoked_subcommand is None:
        list_queues(ctx)


@app.command("list")
def list_queues(ctx: typer.Context) -> None:
    """Show every queue with its ready, delayed, in-flight and dead messages."""
    session: Session = ctx.obj
    with _reported_errors():
        stats = session.admin.stats()
    if session.wants_json:
        _print_json([dataclasses.asdict(s) for s in stats])
    elif not stats:
        _console().print(f"No queues under prefix {escape(repr(session.prefix))}.")
    else:
        _print_table(_stats_table(stats))


@app.command()
def dead(
    ctx: typer.Context,
    queue: str = typer.Argument(..., metavar="QUEUE", help="The queue whose dead letters to show."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="Show at most this many, oldest first."),
) -> None:
    """Show the dead letters of a queue: messages no worker could process."""
    session: Session = ctx.obj
    with _reported_errors():
        letters = session.admin.dead_letters(session.admin.existing(queue), limit=limit + 1)
    shown = letters[:limit]
    if session.wants_json:
        _print_json([letter.as_dict() for letter in shown])
        return
    if not shown:
        _console().print(f"No dead letters in queue {escape(repr(queue))}.")
        return
    _print_table(_dead_letters_table(shown))
    if len(letters) > limit:
        _console(stderr=True).print(f"Only the oldest {limit} are shown; use --limit to see more.")


@app.command()
def retry(
    ctx: typer.Context,
    queue: str = typer.Argument(..., metavar="QUEUE", help="The queue whose dead letters to replay."),
    message_ids: Optional[list[str]] = typer.Argument(
        None, metavar="MESSAGE_ID", help="Message ids (or seq:N) of the dead letters to replay.", show_default=False
    ),
    every: bool = typer.Option(False, "--all", help="Replay every dead letter of the queue."),
) -> None:
    """Put dead letters back on their queue with a fresh retry budget."""
    if every and message_ids:
        ctx.fail("pass either --all or message ids, not both")
    if not every and not message_ids:
        ctx.fail("name the message ids to retry, or pass --all")
    session: Session = ctx.obj
    with _reported_errors():
        report = session.admin.retry(session.admin.existing(queue), None if every else message_ids)
    _show_retry(report, queue=queue, as_json=session.wants_json)
    if report.missing or report.failed:
        raise typer.Exit(1)


@app.command()
def purge(
    ctx: typer.Context,
    queue: str = typer.Argument(..., metavar="QUEUE", help="The queue to empty."),
    dead: bool = typer.Option(False, "--dead", help="Drop the queue's dead letters instead of its messages."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Drop a queue's ready, delayed and in-flight messages (or, with --dead, its dead letters)."""
    session: Session = ctx.obj
    with _reported_errors():
        session.admin.existing(queue)
        if not yes:
            (stats,) = session.admin.stats([queue])
            held = _purgeable(stats, dead=dead)
            typer.confirm(f"Drop {held} from queue {queue!r}?", abort=True, err=True)
        purged = session.admin.purge_dead(queue) if dead else session.admin.purge(queue)
    if session.wants_json:
        _print_json({"queue": queue, "dead": dead, "purged": purged})
    else:
        what = _plural(purged, "dead letter") if dead else _plural(purged, "message")
        _console().print(f"Dropped {what} from queue {escape(repr(queue))}.")


# Failures ------------------------------------------------------------------------------
@contextmanager
def _reported_errors() -> Iterator[None]:
    """Turn the failures an operator can fix into one line on stderr and exit code 1."""
    try:
        yield
    except (BrokerError, WorkersError) as exc:
        _console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None


@contextmanager
def _reconnect_warnings_hidden() -> Iterator[None]:
    # The connection's warnings while it retries are meant for long-running
    # workers; a command reports a failed connection itself, in one line.
    logger = logging.getLogger(connection.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# Printing ------------------------------------------------------------------------------
def _console(*, stderr: bool = False) -> Console:
    # Built per use so it writes to the streams (and terminal) of this invocation.
    return Console(stderr=stderr)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _stats_table(stats: list[QueueStats]) -> Table:
    table = _table(*STATS_COLUMNS)
    for column in table.columns[1:]:
        column.justify = "right"
    for row in stats:
        table.add_row(*(Text(str(getattr(row, field))) for field in STATS_COLUMNS.values()))
    return table


def _table(*headers: str) -> Table:
    """A borderless table, one line per row; rows are added as ``Text`` so data is never read as markup."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for header in headers:
        table.add_column(header, no_wrap=True)
    return table


def _print_table(table: Table) -> None:
    # One line per row, as kubectl does: ids stay whole and rows stay greppable;
    # a terminal narrower than the table wraps the lines instead of rich folding cells.
    console = _console()
    natural = console.measure(table, options=console.options.update_width(10_000)).maximum
    console.width = max(console.width, natural)
    console.print(table)


def _dead_letters_table(letters: list[DeadLetter]) -> Table:
    table = _table("MESSAGE ID", "ACTOR", "ARGS", "REASON", "ERROR", "DEAD AT")
    for letter in letters:
        cells = (
            letter.message_id,
            letter.actor,
            _truncate(_call_args(letter), width=ARGS_WIDTH),
            letter.reason,
            _truncate(letter.error, width=ERROR_WIDTH),
            letter.dead_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        table.add_row(*map(Text, cells))
    return table


def _show_retry(report: RetryReport, *, queue: str, as_json: bool) -> None:
    if as_json:
        failed = [{"message_id": message_id, "reason": reason} for message_id, reason in report.failed]
        _print_json({"queue": queue, "retried": report.retried, "missing": report.missing, "failed": failed})
        return
    _console().print(f"Retried {_plural(len(report.retried), 'dead letter')} of queue {escape(repr(queue))}.")
    errors = _console(stderr=True)
    if report.missing:
        errors.print(f"[red]not found:[/] {escape(', '.join(report.missing))}", soft_wrap=True)
    for message_id, reason in report.failed:
        errors.print(f"[red]failed:[/] {escape(message_id)}: {escape(reason)}", soft_wrap=True)


def _purgeable(stats: QueueStats, *, dead: bool) -> str:
    if dead:
        return _plural(stats.dead, "dead letter")
    return f"{_plural(stats.ready + stats.delayed + stats.in_flight, 'message')} (ready, delayed or in flight)"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _call_args(letter: DeadLetter) -> str:
    if letter.message is None:
        return "?"
    args = [json.dumps(a, default=repr) for a in letter.message.args]
    kwargs = [f"{k}={json.dumps(v, default=repr)}" for k, v in letter.message.kwargs.items()]
    return ", ".join(args + kwargs)


def _truncate(text: str, *, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
