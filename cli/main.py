"""The ``threeport`` command.

Each group of verbs lives in its own module and is mounted here; the
environment is read only at this edge (``NATS_URL``, ``THREEPORT_PREFIX``,
``THREEPORT_HOME``, and the client config's ``THREEPORT_CONFIG``,
``THREEPORT_API_URL``, ``THREEPORT_API_TOKEN``).
"""

from __future__ import annotations

import os
import sys

import typer

from workers import logs

from . import api, config, migrate, objects, queues, up, worker, workers

app = typer.Typer(
    name="threeport",
    help="Threeport: a control plane for apps and their infrastructure.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", help="Show each API request (method, URL, status) on stderr."),
) -> None:
    """Threeport: a control plane for apps and their infrastructure."""
    ctx.meta[objects.VERBOSE] = verbose
    problem = logs.env_problem()
    if problem:  # found now, not as a traceback in a process it starts
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1)


# The control plane's objects
app.command("apply")(objects.apply)
app.command("get")(objects.get)
app.command("describe")(objects.describe)
app.command("delete")(objects.delete)
app.command("wait")(objects.wait)
app.command("events")(objects.events)
app.command("version")(objects.version)
app.add_typer(config.app, name="config", help="The control planes this client talks to.")
# Running a control plane
app.add_typer(queues.app, name="queues")
app.command("up")(up.up)
app.command("api")(api.serve)
app.command("migrate")(migrate.run)
app.command("worker")(worker.run)
app.command("workers")(workers.list_workers)


#: Set to show the traceback of an error no command turned into a message of its own.
DEBUG_ENV = "THREEPORT_DEBUG"


def main() -> None:
    try:
        app()
    except Exception as exc:  # the last resort: one line, not a traceback (each command says its own errors)
        if os.environ.get(DEBUG_ENV):
            raise
        lines = str(exc).strip().splitlines()
        said = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        typer.echo(f"Error: {said} ({DEBUG_ENV}=1 shows where)", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
