"""``threeport up``: run the control plane on this machine.

For now this starts the message spine: an embedded ``nats-server -js`` whose
data lives under ``THREEPORT_HOME`` (default ``./.threeport``), so a second
run reuses it. With ``NATS_URL`` set it uses that server instead. Ctrl-C or
SIGTERM stops everything it started.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import typer
from rich.console import Console

from .local_servers import NatsServer, ServerError

DEFAULT_NATS_PORT = 4222

console = Console()


def up(
    home: Path = typer.Option(Path(".threeport"), envvar="THREEPORT_HOME", help="Where local data lives."),
    nats_port: int = typer.Option(DEFAULT_NATS_PORT, envvar="THREEPORT_NATS_PORT", help="Port of the embedded NATS."),
) -> None:
    """Start the control plane locally and run until Ctrl-C."""
    external = os.environ.get("NATS_URL")
    server = None
    if external:
        url = external
        console.print(f"Using NATS at [bold]{url}[/] (NATS_URL).")
    else:
        server = NatsServer(store_dir=home.resolve() / "nats", port=nats_port, name="threeport")
        try:
            server.start()
        except ServerError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from None
        url = server.url
        console.print(f"NATS JetStream listening on [bold]{url}[/] (data in {server.store_dir}).")
    console.print("Press Ctrl-C to stop.")
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            if server is not None and not server.running:
                console.print(f"[red]nats-server exited; see {server.log_path}[/]")
                raise typer.Exit(1)
    finally:
        if server is not None:
            server.stop()
        console.print("Stopped.")
