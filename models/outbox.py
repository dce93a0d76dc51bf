"""The outbox: work to enqueue, written in the same transaction as the change that needs it.

A row says "run ``actor`` on ``queue`` for this object at this generation".
It commits or rolls back with the object's row, so no change is ever lost
between the database and NATS. After commit the API publishes its rows at
once; the relay publishes whatever is left after a few seconds. Its ``id``
is the ``Nats-Msg-Id`` of that publish, so JetStream's duplicate window
drops the second of two publishes of one row; a row is deleted only after
the PubAck. ``created_at`` is indexed for the relay's oldest-first scan.
While tracing is on, a row also keeps the trace context of the change that
wrote it (:data:`TRACE_KEY`), which its message carries on.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Optional

import peewee
from playhouse.postgres_ext import BinaryJSONField

from .base import BaseModel, ReconciledModel, UTCDateTimeField, utcnow

__all__ = ["Outbox", "TRACE_KEY", "set_trace_context"]

#: The payload key holding the W3C trace context (``traceparent``, ``tracestate``) of the change that wrote the
#: row; the message carries it in its options, not in the actor's arguments.
TRACE_KEY = "_trace"

#: Gives the current trace context to keep with a row ({} for none); None while tracing is off.
_trace_context: Optional[Callable[[], dict[str, str]]] = None


def set_trace_context(source: Optional[Callable[[], dict[str, str]]]) -> None:
    """Keep ``source()``'s trace context with every row made from now on (None: keep none); set by the tracing."""
    global _trace_context
    _trace_context = source


class Outbox(BaseModel):
    """One message waiting to be published."""

    #: Also the ``Nats-Msg-Id`` of its publish.
    id = peewee.UUIDField(primary_key=True, default=uuid.uuid4)
    queue = peewee.TextField()
    actor = peewee.TextField()
    kind = peewee.TextField()
    object_id = peewee.UUIDField()
    generation = peewee.BigIntegerField()
    created_at = UTCDateTimeField(default=utcnow, index=True)
    #: The actor's keyword arguments (and the trace context under :data:`TRACE_KEY`).
    payload = BinaryJSONField(default=dict)

    class Meta:
        table_name = "outbox"

    @classmethod
    def for_object(cls, obj: ReconciledModel, **fields: Any) -> "Outbox":
        """A row (not saved yet) asking ``obj``'s actor to reconcile its current generation; ``fields``: its id, say."""
        payload = {"kind": obj.kind, "object_id": str(obj.id), "generation": obj.generation}
        trace = _trace_context() if _trace_context is not None else None
        if trace:
            payload[TRACE_KEY] = trace
        return cls(
            queue=obj.queue,
            actor=obj.actor,
            kind=obj.kind,
            object_id=obj.id,
            generation=obj.generation,
            payload=payload,
            **fields,
        )
