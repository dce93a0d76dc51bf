"""Prometheus metrics of worker processes: Dramatiq's message metrics, reconciles, queues, the outbox, an HTTP exporter.

:class:`MessageMetrics` is a Dramatiq middleware that records the metrics
under Dramatiq's own names (``dramatiq_messages_total``, …) so dashboards
made for Dramatiq work unchanged; :func:`reconcile_timer` times one
reconcile and counts its result. These live in prometheus_client's default
registry, which writes to files shared by processes when
``PROMETHEUS_MULTIPROC_DIR`` is set. What other processes cannot add up (the
queues' depth in NATS, the outbox's backlog in the database) is read when
scraped, by :class:`QueueCollector` and :class:`OutboxCollector`, in the one
process that serves ``/metrics`` (:func:`start_metrics_server`), beside the
worker's ``/healthz`` and ``/readyz`` probes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socketserver
import threading
import time
from typing import Callable, Iterable, Iterator, Mapping, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import dramatiq
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    # Recording
    "MessageMetrics",
    "ReconcileOutcome",
    "reconcile_timer",
    "LOCK_CONTENTION",
    # Read when scraped
    "QueueCollector",
    "OutboxCollector",
    # Serving
    "metrics_registry",
    "start_metrics_server",
    "forget_process",
    "Probe",
]

logger = logging.getLogger(__name__)

_MESSAGE_LABELS = ("queue_name", "actor_name")
#: Dramatiq's own buckets for message durations, in milliseconds.
_DURATION_BUCKETS_MS = (5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000, 30000, 60000, 600000)
#: The queue states ``threeport_queue_messages`` counts (fields of :class:`workers.broker.QueueStats`).
QUEUE_STATES = ("ready", "delayed", "in_flight", "dead")
MESSAGES = Counter("dramatiq_messages_total", "The total number of messages processed.", _MESSAGE_LABELS)
MESSAGE_ERRORS = Counter("dramatiq_message_errors_total", "The total number of errored messages.", _MESSAGE_LABELS)
MESSAGE_RETRIES = Counter("dramatiq_message_retries_total", "The total number of retried messages.", _MESSAGE_LABELS)
MESSAGE_REJECTS = Counter(
    "dramatiq_message_rejects_total", "The total number of dead-lettered messages.", _MESSAGE_LABELS
)
MESSAGES_IN_PROGRESS = Gauge(
    "dramatiq_messages_inprogress", "The number of messages in progress.", _MESSAGE_LABELS, multiprocess_mode="livesum"
)
MESSAGE_DURATION = Histogram(
    "dramatiq_message_duration_milliseconds",
    "The time spent processing messages.",
    _MESSAGE_LABELS,
    buckets=_DURATION_BUCKETS_MS,
)
RECONCILES = Counter(
    "threeport_reconcile_total",
    "Reconciles by kind and result (reconciled, waiting, failed, error, skipped, deleted, interrupted).",
    ("kind", "result"),
)
RECONCILE_DURATION = Histogram("threeport_reconcile_duration_seconds", "The time reconciles take.", ("kind",))
LOCK_CONTENTION = Counter(
    "threeport_lock_contention_total", "Reconciles put back because another held the object's lock.", ("kind",)
)


class MessageMetrics(dramatiq.Middleware):
    """Counts and times messages under Dramatiq's metric names, labelled by queue and actor."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()

    def before_process_message(self, broker, message) -> None:
        MESSAGES_IN_PROGRESS.labels(message.queue_name, message.actor_name).inc()
        with self._lock:
            self._started[message.message_id] = time.monotonic()

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        labels = (message.queue_name, message.actor_name)
        with self._lock:
            started = self._started.pop(message.message_id, None)
        if started is not None:
            MESSAGE_DURATION.labels(*labels).observe((time.monotonic() - started) * 1000)
        MESSAGES_IN_PROGRESS.labels(*labels).dec()
        MESSAGES.labels(*labels).inc()
        if exception is not None:
            MESSAGE_ERRORS.labels(*labels).inc()

    after_skip_message = after_process_message

    def after_enqueue(self, broker, message, delay) -> None:
        if "retries" in message.options:  # the Retries middleware sends a failed message again
            MESSAGE_RETRIES.labels(message.queue_name, message.actor_name).inc()

    def after_nack(self, broker, message) -> None:
        MESSAGE_REJECTS.labels(message.queue_name, message.actor_name).inc()


class ReconcileOutcome:
    """What a reconcile came to; the block of :func:`reconcile_timer` sets ``result``."""

    result: Optional[str] = None


@contextlib.contextmanager
def reconcile_timer(kind: str) -> Iterator[ReconcileOutcome]:
    """Time one reconcile of ``kind``, count and log (debug) its result; an exception out of the block is ``error``."""
    outcome = ReconcileOutcome()
    started = time.monotonic()
    try:
        yield outcome
    except BaseException:
        outcome.result = "error"
        raise
    finally:
        seconds = time.monotonic() - started
        RECONCILE_DURATION.labels(kind).observe(seconds)
        if outcome.result is not None:
            RECONCILES.labels(kind, outcome.result).inc()
        extra = {"result": outcome.result, "seconds": round(seconds, 4)}
        logger.debug("Reconcile of a %s: %s.", kind, outcome.result, extra=extra)


# Read when scraped ------------------------------------------------------------------------
class QueueCollector(Collector):
    """``threeport_queue_messages{queue,state}`` and ``threeport_queue_consumers{queue}``, asked of NATS when scraped.

    Every queue of the deployment is counted, consumed here or not (a queue
    no worker consumes is the one to alert on), so every worker reports the
    same figures: aggregate with ``max by (queue, state)``. A scrape while
    NATS does not answer leaves them out rather than failing or waiting.
    """

    def __init__(self, broker) -> None:
        self.broker = broker
        self._answered = False

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from .admin import QueueAdmin  # admin imports the broker, which is not needed to record metrics

        if self._answered and not self.broker.connection.is_open:
            # Reconnecting: every request would wait for its timeout, and a scrape (or a probe
            # on /metrics) must answer at once.
            logger.debug("Queue figures left out of the metrics while NATS is away.")
            return
        try:
            stats = QueueAdmin(self.broker).stats()
        except Exception as exc:  # a scrape must answer whatever NATS does
            logger.warning("Queue figures left out of the metrics: %s", exc)
            return
        self._answered = True
        messages = GaugeMetricFamily(
            "threeport_queue_messages",
            "Messages in each queue by state: ready, delayed, in_flight (delivered, not acked), dead (dead letters).",
            labels=("queue", "state"),
        )
        consumers = GaugeMetricFamily(
            "threeport_queue_consumers", "Worker processes consuming each queue.", labels=("queue",)
        )
        for queue in stats:
            for state in QUEUE_STATES:
                messages.add_metric((queue.queue, state), getattr(queue, state))
            consumers.add_metric((queue.queue,), queue.consumers)
        yield messages
        yield consumers


class OutboxCollector(Collector):
    """``threeport_outbox_rows`` and ``threeport_outbox_oldest_age_seconds``, one cheap query when scraped.

    A growing backlog or age means neither the API's fast path nor the relay
    is publishing. The query is ``SELECT count(*), min(created_at)`` on the
    indexed outbox, in a connection returned to the pool at once.
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            rows, oldest = _outbox_backlog()
        except Exception as exc:  # a scrape must answer whatever the database does
            logger.warning("Outbox figures left out of the metrics: %s", exc)
            return
        age = (dt.datetime.now(dt.timezone.utc) - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily("threeport_outbox_rows", "Outbox rows not published yet.", value=rows)
        yield GaugeMetricFamily(
            "threeport_outbox_oldest_age_seconds",
            "Age of the oldest outbox row not published yet (0 when there is none).",
            value=max(0.0, age),
        )


def _outbox_backlog() -> tuple[int, Optional[dt.datetime]]:
    from peewee import fn

    from models import db
    from models.outbox import Outbox

    with db.connection_context():
        rows, oldest = Outbox.select(fn.COUNT(Outbox.id), fn.MIN(Outbox.created_at)).tuples().get()
    if isinstance(oldest, dt.datetime) and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=dt.timezone.utc)
    return int(rows or 0), oldest


# Serving ----------------------------------------------------------------------------------
#: A probe: whether all is well, and what it saw (shown as the JSON answer).
Probe = Callable[[], tuple[bool, dict]]


def metrics_registry(*collectors: Collector) -> CollectorRegistry:
    """Every process's metrics when ``PROMETHEUS_MULTIPROC_DIR`` is set, else this process's; plus ``collectors``."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        if not collectors:
            return REGISTRY
        registry = CollectorRegistry()
        registry.register(_Everything(REGISTRY))
    else:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    for collector in collectors:
        registry.register(collector)
    return registry


class _Everything(Collector):
    """Another registry's metrics, inside this one (so collectors are added without touching the default one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        return self.registry.collect()


def start_metrics_server(
    port: int,
    addr: str = "0.0.0.0",
    *,
    collectors: Iterable[Collector] = (),
    probes: Optional[Mapping[str, Probe]] = None,
) -> WSGIServer:
    """Serve ``/metrics`` (with ``collectors``) and the ``probes`` by path on ``port``, from daemon threads.

    A probe answers 200 with its JSON while it holds, else 503. Returns the
    server; ``shutdown()`` stops it.
    """
    metrics = make_wsgi_app(metrics_registry(*collectors))
    probes = dict(probes or {})

    def app(environ, start_response):
        probe = probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics(environ, start_response)
        try:
            ok, detail = probe()
        except Exception as exc:  # a probe that fails says so
            ok, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
        body = json.dumps({"status": "ok" if ok else "failing", **detail}).encode()
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
        return [body]

    server = make_server(addr, port, app, _ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics http", daemon=True).start()
    return server


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # scrapes and probes every few seconds: not worth a line
        pass


def forget_process(pid: int) -> None:
    """Drop a finished process's live gauges (``dramatiq_messages_inprogress``) when metrics are shared by files."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
