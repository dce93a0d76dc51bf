"""Prometheus metrics of worker processes: Dramatiq's message metrics, reconcile outcomes, an HTTP exporter.

:class:`MessageMetrics` is a Dramatiq middleware that records the metrics
under Dramatiq's own names (``dramatiq_messages_total``, …) so dashboards
made for Dramatiq work unchanged; :func:`reconcile_timer` times one
reconcile and counts its result. The metrics live in prometheus_client's
default registry, which writes to files shared by processes when
``PROMETHEUS_MULTIPROC_DIR`` is set; :func:`start_metrics_server` then
serves the sum of every process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Iterator, Optional

import dramatiq
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server

__all__ = ["MessageMetrics", "ReconcileOutcome", "reconcile_timer", "metrics_registry", "start_metrics_server"]

_MESSAGE_LABELS = ("queue_name", "actor_name")
#: Dramatiq's own buckets for message durations, in milliseconds.
_DURATION_BUCKETS_MS = (5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000, 30000, 60000, 600000)

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
    "Reconciles by kind and result (reconciled, waiting, failed, error, skipped, deleted).",
    ("kind", "result"),
)
RECONCILE_DURATION = Histogram("threeport_reconcile_duration_seconds", "The time reconciles take.", ("kind",))


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
    """Time one reconcile of ``kind`` and count its result; an exception out of the block counts as ``error``."""
    outcome = ReconcileOutcome()
    started = time.monotonic()
    try:
        yield outcome
    except BaseException:
        outcome.result = "error"
        raise
    finally:
        RECONCILE_DURATION.labels(kind).observe(time.monotonic() - started)
        if outcome.result is not None:
            RECONCILES.labels(kind, outcome.result).inc()


def metrics_registry() -> CollectorRegistry:
    """Every process's metrics when ``PROMETHEUS_MULTIPROC_DIR`` is set, else this process's."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` over HTTP on ``port`` from a daemon thread."""
    start_http_server(port, addr=addr, registry=metrics_registry())
