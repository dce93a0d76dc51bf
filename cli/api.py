"""``threeport api``: serve the HTTP API under gunicorn (what compose and Kubernetes run).

gunicorn is embedded through its ``BaseApplication`` so the command needs no
config file; it forks ``--workers`` processes, each with ``--threads``
threads (:class:`api.gunicorn_worker.LingeringThreadWorker`), and stops
gracefully on SIGTERM within ``--graceful-timeout``.
"""

from __future__ import annotations

import os

import typer
from gunicorn.app.base import BaseApplication

from api.app import get_app
from api.gunicorn_worker import DEFAULT_LINGER, LINGER_ENV
from workers.replicas import DEFAULT_REPLICAS
from workers.replicas import ENV_VAR as REPLICAS_ENV

DEFAULT_PORT = 1323


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25.1: its socket is one path per user
            self.cfg.set("control_socket_disable", True)

    def load(self):
        return get_app()


def serve(
    host: str = typer.Option("0.0.0.0", envvar="THREEPORT_API_HOST", help="Address to listen on."),
    port: int = typer.Option(DEFAULT_PORT, envvar="THREEPORT_API_PORT", min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(2, envvar="THREEPORT_API_WORKERS", min=1, help="gunicorn worker processes."),
    threads: int = typer.Option(8, envvar="THREEPORT_API_THREADS", min=1, help="Threads per worker process."),
    graceful_timeout: int = typer.Option(20, min=0, help="Seconds to finish requests on SIGTERM."),
    linger: float = typer.Option(
        DEFAULT_LINGER,
        envvar=LINGER_ENV,
        min=0,
        help="Seconds a thread that answered a keep-alive connection waits for its next request "
        "before handing it back to the worker's poller (0: at once).",
    ),
    access_log: bool = typer.Option(
        False,
        "--access-log/--no-access-log",
        envvar="THREEPORT_API_ACCESS_LOG",
        help="Log a line per request on stdout (a tenth of the API's CPU at full load; "
        "threeport_http_requests_total counts them either way).",
    ),
    nats_replicas: int = typer.Option(
        DEFAULT_REPLICAS,
        "--nats-replicas",
        envvar=REPLICAS_ENV,
        min=1,
        help="Replicas of the queue streams it creates (3 on a 3-node JetStream cluster).",
    ),
) -> None:
    """Serve the HTTP API (DATABASE_URL, NATS_URL and THREEPORT_API_TOKEN from the environment)."""
    os.environ[REPLICAS_ENV] = str(nats_replicas)  # what get_app() reads in every gunicorn worker
    os.environ[LINGER_ENV] = str(linger)  # what every gunicorn worker reads
    _Gunicorn(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "threads": threads,
            "worker_class": "api.gunicorn_worker.LingeringThreadWorker",
            "graceful_timeout": graceful_timeout,
            "accesslog": "-" if access_log else None,
            "errorlog": "-",
        }
    ).run()
