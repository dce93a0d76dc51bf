"""The outbox: work to enqueue, written in the same transaction as the change that needs it.

A row says "run ``actor`` on ``queue`` for this object at this generation".
It commits or rolls back with the object's row, so no change is ever lost
between the database and NATS. After commit the API publishes its rows at
once; the relay publishes whatever is left after a few seconds. Its ``id``
is the ``Nats-Msg-Id`` of that publish, so JetStream's duplicate window
drops the second of two publishes of one row; a row is deleted only after
the PubAck. ``created_at`` is indexed for the relay's oldest-first scan.
"""

from __future__ import annotations

import uuid

import peewee
from playhouse.postgres_ext import BinaryJSONField

from .base import BaseModel, ReconciledModel, UTCDateTimeField, utcnow

__all__ = ["Outbox"]


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
    #: The actor's keyword arguments.
    payload = BinaryJSONField(default=dict)

    class Meta:
        table_name = "outbox"

    @classmethod
    def for_object(cls, obj: ReconciledModel) -> "Outbox":
        """A row (not saved yet) asking ``obj``'s actor to reconcile its current generation."""
        return cls(
            queue=obj.queue,
            actor=obj.actor,
            kind=obj.kind,
            object_id=obj.id,
            generation=obj.generation,
            payload={"kind": obj.kind, "object_id": str(obj.id), "generation": obj.generation},
        )
