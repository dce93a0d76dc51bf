"""``threeport worker``: Dramatiq worker processes that reconcile, plus the outbox relay.

Each process binds the database, opens its own broker (one NATS connection,
one loop thread), declares the ``reconcile`` actor on the chosen queues
(every kind's by default: ``--queues aws`` lets AWS-heavy and workload-heavy
replicas scale apart) and runs a Dramatiq ``Worker`` with ``--threads``
threads. Every process also runs the relay; a leader lock keeps one active
in the whole deployment. SIGTERM or SIGINT stops them gracefully: running
actors finish, prefetched messages are handed back at once. Secret fields
are read with the keys in ``THREEPORT_ENCRYPTION_KEY``. Each process writes
a heartbeat to NATS (``threeport workers``), logs through
:mod:`workers.logs` and, when the ``OTEL_*`` variables ask for it, traces
the messages it processes (:mod:`workers.tracing`); ``--metrics-port``
serves ``/metrics``, ``/healthz`` and ``/readyz`` (with several processes,
from the parent).
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
from workers.replicas import DEFAULT_REPLICAS
from workers.replicas import ENV_VAR as REPLICAS_ENV


def _known_queues(queues: Optional[list[str]]) -> Optional[list[str]]:
    """``--queues``, once each is the queue of a kind the workers reconcile (a typo would consume nothing)."""
    from models import registry

    known = sorted({model.queue for model in registry.reconciled_kinds()})
    for queue in queues or ():
        if queue not in known:
            raise typer.BadParameter(f"no kind is reconciled on queue {queue!r} (queues: {', '.join(known)})")
    return queues


def _database_url(url: str) -> str:
    """``--database-url``, once its scheme names a database the workers can use."""
    from models.errors import ConfigurationError

    try:
        database_from_url(url).close_all()  # builds the pool only: nothing connects yet
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc)) from None
    return url


def run(
    processes: int = typer.Option(1, envvar="THREEPORT_WORKER_PROCESSES", min=1, help="Worker processes."),
    threads: int = typer.Option(8, envvar="THREEPORT_WORKER_THREADS", min=1, help="Threads per process."),
    queues: Optional[list[str]] = typer.Option(
        None, "--queues", "-Q", callback=_known_queues, help="Queues to consume (default: all)."
    ),
    database_url: str = typer.Option(
        "postgresql://postgres@127.0.0.1:5432/threeport",
        envvar="DATABASE_URL",
        callback=_database_url,
        help="The database.",
    ),
    nats_url: str = typer.Option("nats://127.0.0.1:4222", envvar="NATS_URL", help="NATS server(s)."),
    prefix: str = typer.Option("threeport", envvar="THREEPORT_PREFIX", help="Namespace of streams."),
    nats_replicas: int = typer.Option(
        DEFAULT_REPLICAS,
        "--nats-replicas",
        envvar=REPLICAS_ENV,
        min=1,
        help="Replicas of the streams and KV buckets it creates (3 on a 3-node JetStream cluster).",
    ),
    shutdown_timeout: float = typer.Option(25.0, help="Seconds running actors get to finish on SIGTERM."),
    metrics_port: Optional[int] = typer.Option(
        None,
        "--metrics-port",
        envvar="THREEPORT_METRICS_PORT",
        min=1,
        max=65535,
        help="Serve Prometheus /metrics and the /healthz and /readyz probes on this port.",
    ),
    heartbeat_interval: float = typer.Option(
        5.0,
        envvar="THREEPORT_HEARTBEAT_INTERVAL",
        min=0.5,
        help="Seconds between heartbeats; a killed worker's entry expires after three.",
    ),
    extension: Optional[list[str]] = typer.Option(
        None,
        "--extension",
        help="Run the controller of the extensions this module defines instead (no database; repeatable).",
    ),
    api_url: str = typer.Option(
        "http://127.0.0.1:8080", envvar="THREEPORT_API_URL", help="The API an extension controller talks to."
    ),
    api_token: str = typer.Option("", envvar="THREEPORT_API_TOKEN", help="Its bearer token.", show_default=False),
) -> None:
    """Run worker processes until SIGTERM or Ctrl-C."""
    from workers.logs import configure_from_env

    configure_from_env()
    if extension:
        from .extension_worker import serve

        serve(
            extension,
            threads=threads,
            nats_url=nats_url,
            prefix=prefix,
            replicas=nats_replicas,
            api_url=api_url,
            api_token=api_token,
            shutdown_timeout=shutdown_timeout,
        )
        return
    if metrics_port is not None and processes > 1:  # the processes' metrics meet in files (inherited by the children)
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="threeport-metrics-"))
    options = dict(
        threads=threads,
        queues=queues or None,
        database_url=database_url,
        nats_url=nats_url,
        prefix=prefix,
        replicas=nats_replicas,
        shutdown_timeout=shutdown_timeout,
        heartbeat_interval=heartbeat_interval,
    )
    if processes == 1:
        _serve(**options, metrics_port=metrics_port)
        return
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_serve, kwargs=options, name=f"worker-{n}") for n in range(processes)]
    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: signals.append(signum))
    for child in children:
        child.start()
    if metrics_port is not None:
        _serve_group_metrics(
            metrics_port, children, database_url=database_url, nats_url=nats_url, prefix=prefix, replicas=nats_replicas
        )
    while not signals and all(child.is_alive() for child in children):
        time.sleep(0.2)
    for child in children:
        if child.is_alive() and child.pid:
            child.terminate()  # SIGTERM: a graceful stop
    for child in children:
        child.join(shutdown_timeout + 10)
        _forget_process(child.pid)
    failed = [c for c in children if c.exitcode not in (0, -signal.SIGTERM)]
    if failed and not signals:
        raise typer.Exit(1)


def _serve(
    *,
    threads: int,
    queues: Optional[list[str]],
    database_url: str,
    nats_url: str,
    prefix: str,
    replicas: int,
    shutdown_timeout: float,
    heartbeat_interval: float,
    metrics_port: Optional[int] = None,
) -> None:
    """One worker process: reconcile until SIGTERM/SIGINT."""
    import dramatiq

    from tasks.actor import declare_actors
    from workers import tracing
    from workers.broker import JetStreamBroker
    from workers.heartbeats import Heartbeats
    from workers.logs import add_message_context, configure_from_env
    from workers.metrics import MessageMetrics, OutboxCollector, QueueCollector, start_metrics_server
    from workers.relay import Relay

    configure_from_env()  # a spawned process starts with no logging set up
    traced = tracing.configure_from_env("threeport-worker")
    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: signals.append(signum))
    bind(database_from_url(database_url))
    secrets.configure(os.environ.get(secrets.ENV_VAR))
    broker = JetStreamBroker(nats_url, prefix=prefix, replicas=replicas, name="threeport-worker")
    add_message_context(broker)
    if traced:
        tracing.add_message_tracing(broker)
    broker.add_middleware(MessageMetrics())
    heartbeats = Heartbeats(interval=heartbeat_interval)
    broker.add_middleware(heartbeats)
    dramatiq.set_broker(broker)
    declare_actors(broker, queues)
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, queues=set(queues) if queues else None, worker_threads=threads)
    relay = Relay(broker)
    worker.start()
    relay.start()
    if metrics_port is not None:
        probes = probe_routes(heartbeats)
        start_metrics_server(metrics_port, collectors=[QueueCollector(broker), OutboxCollector()], probes=probes)
    print(f"worker ready: queues {sorted(worker.consumers) or sorted(broker.get_declared_queues())}", flush=True)
    try:
        while not signals:
            time.sleep(0.2)
    finally:
        relay.stop()
        worker.stop(timeout=int(shutdown_timeout * 1000))
        broker.close()
        tracing.shutdown()  # a spawned process ends without atexit hooks: export the last spans now
        _forget_process(os.getpid())


def _serve_group_metrics(
    port: int, children: list, *, database_url: str, nats_url: str, prefix: str, replicas: int
) -> None:
    """The parent's exporter: every process's metrics, the queues and outbox, probes from the children's heartbeats."""
    from workers.broker import JetStreamBroker
    from workers.heartbeats import ProcessGroupProbes
    from workers.metrics import OutboxCollector, QueueCollector, start_metrics_server

    bind(database_from_url(database_url))
    broker = JetStreamBroker(nats_url, prefix=prefix, replicas=replicas, name="threeport-worker-metrics")
    group = ProcessGroupProbes(children, connection=broker.connection, prefix=prefix)
    start_metrics_server(port, collectors=[QueueCollector(broker), OutboxCollector()], probes=probe_routes(group))


def probe_routes(probes) -> dict:
    """The paths of the metrics port that answer ``probes`` (a worker's heartbeats, or a process group's).

    ``/healthz`` holds while the process lives, ``/readyz`` while it consumes; every other path is ``/metrics``.
    """
    return {"/healthz": probes.liveness, "/readyz": probes.readiness}


def _forget_process(pid: Optional[int]) -> None:
    from workers.metrics import forget_process

    if pid is not None:
        forget_process(pid)
