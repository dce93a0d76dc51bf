"""The ``threeport`` command.

Each group of verbs lives in its own module and is mounted here; the
environment is read only at this edge (``NATS_URL``, ``THREEPORT_PREFIX``,
``THREEPORT_HOME``).
"""

from __future__ import annotations

import typer

from . import api, migrate, queues, up, worker

app = typer.Typer(
    name="threeport",
    help="Threeport: a control plane for apps and their infrastructure.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(queues.app, name="queues")
app.command("up")(up.up)
app.command("api")(api.serve)
app.command("migrate")(migrate.run)
app.command("worker")(worker.run)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
