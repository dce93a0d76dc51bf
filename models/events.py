"""The event log of every object: what happened to it, newest last.

The reconcile actor records an :class:`Event` when an object is reconciled,
waits, or fails (reason, message, time); ``GET /v0/events?object_id=…``
lists them. As in Kubernetes, an event that repeats the object's latest one
(same reason and message) bumps its ``count`` and ``last_seen`` rather than
adding a row, so an object waiting on a dependency for an hour is one
event, not hundreds. An object's events go with its row.
"""

from __future__ import annotations

import uuid

import peewee

from .base import RecordModel, UTCDateTimeField, utcnow
from .registry import register
from .store import on_removal
from .transactions import transactional

__all__ = ["Event", "record_event", "NORMAL", "WARNING"]

NORMAL = "Normal"
WARNING = "Warning"


@register
class Event(RecordModel):
    kind = "Event"
    plural = "events"
    summary = "What happened to an object: reconciled, waiting, failed (read-only)."

    object_kind = peewee.TextField(help_text="The kind of the object it is about.")
    object_id = peewee.UUIDField(help_text="The id of the object it is about.")
    type = peewee.TextField(choices=[(NORMAL, NORMAL), (WARNING, WARNING)], help_text="'Normal' or 'Warning'.")
    reason = peewee.TextField(help_text="A short CamelCase reason, e.g. 'Reconciled', 'Waiting', 'Failed'.")
    message = peewee.TextField(help_text="What happened.")
    count = peewee.IntegerField(default=1, help_text="How many times it happened in a row.")
    last_seen = UTCDateTimeField(default=utcnow, help_text="When it last happened.")

    class Meta:
        table_name = "events"
        indexes = ((("object_id", "created_at"), False),)


@transactional
def record_event(
    object_kind: str, object_id: uuid.UUID | str, reason: str, message: str, *, type: str = NORMAL
) -> Event:
    """Record that ``reason``/``message`` happened to the object (a repeat of its latest event counts up)."""
    object_id = object_id if isinstance(object_id, uuid.UUID) else uuid.UUID(str(object_id))
    latest = (
        Event.select()
        .where(Event.object_id == object_id)
        .order_by(Event.last_seen.desc(), Event.created_at.desc())
        .first()
    )
    now = utcnow()
    if latest is not None and (latest.reason, latest.message, latest.type) == (reason, message, type):
        Event.update(count=Event.count + 1, last_seen=now).where(Event.id == latest.id).execute()
        latest.count += 1
        latest.last_seen = now
        return latest
    event = Event(object_kind=object_kind, object_id=object_id, type=type, reason=reason, message=message)
    event.created_at = event.last_seen = now
    event.save(force_insert=True)
    return event


@on_removal
def _forget_events(kind: str, object_id: uuid.UUID) -> None:
    Event.delete().where(Event.object_id == object_id).execute()
