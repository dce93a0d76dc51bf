"""``threeport worker --extension MODULE``: an extension's controller, deployed on its own.

It needs no database: it registers the module's extensions with the API
(:meth:`tasks.extensions.Extension.register`), then consumes their queues
with the reconcile actor of :mod:`tasks.extensions`, which reads and
reports objects through the API and takes the same per-object NATS locks as
the core workers. It writes heartbeats like them (``threeport workers``
lists it) and logs with the same message context. SIGTERM or SIGINT stops
it gracefully.
"""

from __future__ import annotations

import signal
import time

import typer

from tasks.api_client import ApiClient, ClientError

from .client import reported_errors


def serve(
    modules: list[str],
    *,
    threads: int,
    nats_url: str,
    prefix: str,
    api_url: str,
    api_token: str,
    shutdown_timeout: float,
    replicas: int,
) -> None:
    """Run the controller of the extensions ``modules`` define until SIGTERM/SIGINT."""
    import dramatiq

    from tasks.extensions import declare_extension_actor, load_extensions
    from workers import tracing
    from workers.broker import JetStreamBroker
    from workers.heartbeats import Heartbeats
    from workers.logs import add_message_context
    from workers.metrics import MessageMetrics

    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: signals.append(signum))
    try:
        extensions = load_extensions(modules)
    except (ImportError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not api_token:
        typer.echo("error: the API token is needed: --api-token or THREEPORT_API_TOKEN", err=True)
        raise typer.Exit(2)
    api = ApiClient(api_url, api_token)
    with reported_errors():
        for extension in extensions:
            _register(extension, api)
    traced = tracing.configure_from_env("threeport-extension")  # the OTEL_* variables, as for `threeport worker`
    broker = JetStreamBroker(nats_url, prefix=prefix, replicas=replicas, name="threeport-extension")
    add_message_context(broker)  # log lines carry the message, kind and object ids
    if traced:
        tracing.add_message_tracing(broker)  # a message continues the trace of the API request that caused it
    broker.add_middleware(MessageMetrics())
    broker.add_middleware(Heartbeats())  # listed by `threeport workers` like the core's workers
    dramatiq.set_broker(broker)
    declare_extension_actor(broker, extensions, api)
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=threads)
    worker.start()
    print(f"extension controller ready: queues {sorted(broker.get_declared_queues())}", flush=True)
    try:
        while not signals:
            time.sleep(0.2)
    finally:
        worker.stop(timeout=int(shutdown_timeout * 1000))
        broker.close()
        api.close()
        tracing.shutdown()  # export the last spans


def _register(extension, api: ApiClient, attempts: int = 30) -> None:
    """Register ``extension``, waiting for an API that is still starting (unreachable) up to ``attempts`` seconds."""
    for attempt in range(attempts):
        try:
            registered = extension.register(api)
            break
        except ClientError as exc:
            if getattr(exc, "status", 0) is not None or attempt == attempts - 1:
                raise
            typer.echo(f"waiting for the API at {api.api_url} ({exc})", err=True)
            time.sleep(1)
    kinds = ", ".join(kind["kind"] for kind in registered["kinds"])
    typer.echo(f"registered {extension.domain}/{extension.version}: {kinds} (queue {registered['queue']})", err=True)
