"""``threeport worker``: Dramatiq worker processes that reconcile, plus the outbox relay.

Each process binds the database, opens its own broker (one NATS connection,
one loop thread), declares the ``reconcile`` actor on the chosen queues
(every kind's by default: ``--queues aws`` lets AWS-heavy and workload-heavy
replicas scale apart) and runs a Dramatiq ``Worker`` with ``--threads``
threads. Every process also runs the relay; a leader lock keeps one active
in the whole deployment. SIGTERM or SIGINT stops them gracefully: running
actors finish, prefetched messages are handed back at once. Secret fields
are read with the keys in ``THREEPORT_ENCRYPTION_KEY``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import time
from typing import Optional

import typer

from models import bind, database_from_url, secrets


def run(
    processes: int = typer.Option(1, envvar="THREEPORT_WORKER_PROCESSES", help="Worker processes."),
    threads: int = typer.Option(8, envvar="THREEPORT_WORKER_THREADS", help="Threads per process."),
    queues: Optional[list[str]] = typer.Option(None, "--queues", "-Q", help="Queues to consume (default: all)."),
    database_url: str = typer.Option(
        "postgresql://postgres@127.0.0.1:5432/threeport", envvar="DATABASE_URL", help="The database."
    ),
    nats_url: str = typer.Option("nats://127.0.0.1:4222", envvar="NATS_URL", help="NATS server(s)."),
    prefix: str = typer.Option("threeport", envvar="THREEPORT_PREFIX", help="Namespace of streams."),
    shutdown_timeout: float = typer.Option(25.0, help="Seconds running actors get to finish on SIGTERM."),
    metrics_port: Optional[int] = typer.Option(
        None, "--metrics-port", envvar="THREEPORT_METRICS_PORT", help="Serve Prometheus /metrics on this port."
    ),
) -> None:
    """Run worker processes until SIGTERM or Ctrl-C."""
    if metrics_port is not None:
        if processes > 1:  # the processes' metrics meet in files (inherited by the spawned children)
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="threeport-metrics-"))
        from workers.metrics import start_metrics_server

        start_metrics_server(metrics_port)
    options = dict(
        threads=threads,
        queues=queues or None,
        database_url=database_url,
        nats_url=nats_url,
        prefix=prefix,
        shutdown_timeout=shutdown_timeout,
    )
    if processes == 1:
        _serve(**options)
        return
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_serve, kwargs=options, name=f"worker-{n}") for n in range(processes)]
    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: signals.append(signum))
    for child in children:
        child.start()
    while not signals and all(child.is_alive() for child in children):
        time.sleep(0.2)
    for child in children:
        if child.is_alive() and child.pid:
            child.terminate()  # SIGTERM: a graceful stop
    for child in children:
        child.join(shutdown_timeout + 10)
    failed = [c for c in children if c.exitcode not in (0, -signal.SIGTERM)]
    if failed and not signals:
        raise typer.Exit(1)


def _serve(
    *, threads: int, queues: Optional[list[str]], database_url: str, nats_url: str, prefix: str, shutdown_timeout: float
) -> None:
    """One worker process: reconcile until SIGTERM/SIGINT."""
    import dramatiq

    from tasks.actor import declare_actors
    from workers.broker import JetStreamBroker
    from workers.metrics import MessageMetrics
    from workers.relay import Relay

    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: signals.append(signum))
    bind(database_from_url(database_url))
    secrets.configure(os.environ.get(secrets.ENV_VAR))
    broker = JetStreamBroker(nats_url, prefix=prefix, name="threeport-worker")
    broker.add_middleware(MessageMetrics())
    dramatiq.set_broker(broker)
    declare_actors(broker, queues)
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, queues=set(queues) if queues else None, worker_threads=threads)
    relay = Relay(broker)
    worker.start()
    relay.start()
    print(f"worker ready: queues {sorted(worker.consumers) or sorted(broker.get_declared_queues())}", flush=True)
    try:
        while not signals:
            time.sleep(0.2)
    finally:
        relay.stop()
        worker.stop(timeout=int(shutdown_timeout * 1000))
        broker.close()
