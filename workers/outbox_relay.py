"""Publishing outbox rows as Dramatiq messages: the API's fast path and the relay's sweep.

A row becomes a message for its actor on its queue, with the row id as the
``Nats-Msg-Id``; the row is deleted only after its PubAck. Publishing the
same row twice (fast path and relay racing) enqueues it once, because the
second publish falls inside JetStream's duplicate window. The trace context
a row keeps becomes the message's ``traceparent`` (and ``tracestate``) options.

The API's fast path (:class:`FastPath`) publishes a request's rows before it
answers but deletes them a moment later, many in one statement, from a
background thread: deleting each request's rows in a transaction of its own
cost three more round trips per write. A row whose delete never happens
(the process died first) is what the relay is for: it publishes the row
again, under the same ``Nats-Msg-Id``, which JetStream drops as a duplicate
inside its window, and a reconcile after that finds the generation observed.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
from typing import Sequence

from dramatiq.message import Message

from models import store
from models.outbox import TRACE_KEY, Outbox

from .broker import JetStreamBroker, PartialEnqueue
from .errors import InvalidName
from .naming import validate_queue_name

__all__ = ["FastPath", "message_for", "publish_rows"]

logger = logging.getLogger(__name__)


def message_for(row: Outbox) -> Message:
    """The Dramatiq message an outbox row stands for."""
    kwargs = dict(row.payload)
    options = dict(kwargs.pop(TRACE_KEY, None) or {})
    return Message(queue_name=row.queue, actor_name=row.actor, args=(), kwargs=kwargs, options=options)


def publish_rows(broker: JetStreamBroker, rows: Sequence[Outbox]) -> int:
    """Publish ``rows``, then delete those confirmed; returns how many were.

    Rows that were not confirmed stay in the outbox for the relay.
    """
    confirmed = _published(broker, rows)
    store.delete_outbox(row.id for row in confirmed)
    return len(confirmed)


class FastPath:
    """The API's publisher: publish a write's outbox rows at once, delete them in batches behind it.

    Call it with the rows a request's transaction wrote, after the commit:
    it returns how many were confirmed once they are, and a background
    thread deletes them about ``interval`` seconds later (all that piled up,
    in one statement). :meth:`flush` deletes what is pending now; it runs at
    interpreter exit too. Rows it could not delete are tried again after
    the next write, and the relay deletes them as it publishes them.
    """

    def __init__(self, broker: JetStreamBroker, *, interval: float = 0.05) -> None:
        self.broker = broker
        self.interval = interval
        self._pending: list[uuid.UUID] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        atexit.register(self.flush)

    def __call__(self, rows: Sequence[Outbox]) -> int:
        confirmed = _published(self.broker, rows)
        if confirmed:
            with self._lock:
                self._pending.extend(row.id for row in confirmed)
                self._started()
            self._wake.set()
        return len(confirmed)

    def flush(self) -> int:
        """Delete the rows published so far: how many were deleted (0 when that failed; they are kept)."""
        with self._lock:
            ids, self._pending = self._pending, []
        if not ids:
            return 0
        try:
            return store.delete_outbox(ids)
        except Exception:
            logger.warning("Could not delete %d published outbox rows; trying again.", len(ids), exc_info=True)
            with self._lock:
                self._pending[:0] = ids
            return 0

    def close(self) -> None:
        """Delete what is pending now; no longer at interpreter exit."""
        atexit.unregister(self.flush)
        self.flush()

    def _started(self) -> None:
        """Start the deleting thread in this process (again after a fork); called under the lock."""
        if self._thread is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="outbox deletes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.interval)  # let the batch gather
            self._wake.clear()
            self.flush()  # what it could not delete waits for the next write (or for the relay)


def _published(broker: JetStreamBroker, rows: Sequence[Outbox]) -> list[Outbox]:
    """Publish ``rows``: those confirmed. Rows that were not stay in the outbox for the relay.

    A row for a queue no message can go to (a name NATS cannot hold, kept
    from before names were checked) is left where it is, with an error, and
    does not hold the others back.
    """
    routable = []
    for row in rows:
        try:
            validate_queue_name(row.queue)
            routable.append(row)
        except InvalidName as exc:
            logger.error("Outbox row %s (%s %s) cannot be published: %s.", row.id, row.kind, row.object_id, exc)
    rows = routable
    if not rows:
        return []
    try:
        broker.enqueue_many([message_for(r) for r in rows], msg_ids=[str(r.id) for r in rows])
        return list(rows)
    except PartialEnqueue as partial:
        logger.warning("%d of %d outbox rows not published; the relay retries them.", len(partial.failed), len(rows))
        return [row for index, row in enumerate(rows) if index not in partial.failed_indexes]
