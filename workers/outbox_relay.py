"""Publishing outbox rows as Dramatiq messages: the API's fast path (and, next, the relay's sweep).

A row becomes a message for its actor on its queue, with the row id as the
``Nats-Msg-Id``; the row is deleted only after its PubAck. Publishing the
same row twice (fast path and relay racing) enqueues it once, because the
second publish falls inside JetStream's duplicate window. The trace context
a row keeps becomes the message's ``traceparent`` (and ``tracestate``) options.
"""

from __future__ import annotations

import logging
from typing import Sequence

from dramatiq.message import Message

from models import store
from models.outbox import TRACE_KEY, Outbox

from .broker import JetStreamBroker, PartialEnqueue

__all__ = ["message_for", "publish_rows"]

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
    if not rows:
        return 0
    try:
        broker.enqueue_many([message_for(r) for r in rows], msg_ids=[str(r.id) for r in rows])
        confirmed = list(rows)
    except PartialEnqueue as partial:
        confirmed = [row for index, row in enumerate(rows) if index not in partial.failed_indexes]
        logger.warning("%d of %d outbox rows not published; the relay retries them.", len(partial.failed), len(rows))
    store.delete_outbox(row.id for row in confirmed)
    return len(confirmed)
