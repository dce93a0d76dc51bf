"""The event log of every object: what happened to it, newest last.

The reconcile actor records an :class:`Event` when an object is reconciled,
waits, or fails (reason, message, time); ``GET /v0/events?object_id=…``
lists them. As in Kubernetes, an event that repeats the object's latest one
(same reason and message) bumps its ``count`` and ``last_seen`` rather than
adding a row, so an object waiting on a dependency for an hour is one
event, not hundreds. Recording is one SQL statement, as it runs in every
reconcile. An object's events go with its row.
"""

from __future__ import annotations

import uuid
from typing import Any, Mapping

import peewee

from . import statements, store
from .base import ReconciledModel, RecordModel, UTCDateTimeField, utcnow
from .registry import register
from .store import on_removal
from .transactions import transactional

__all__ = ["Event", "record_event", "write_status_and_record", "NORMAL", "WARNING"]

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


def _recording(guard: str = "") -> str:
    """The CTEs that bump the object's latest event when it is the same, or add a new one; ``guard``: a condition."""
    return f"""
latest AS (
    SELECT id, type, reason, message FROM events WHERE object_id = %(object_id)s {guard}
    ORDER BY last_seen DESC, created_at DESC LIMIT 1
), bumped AS (
    UPDATE events SET count = count + 1, last_seen = %(now)s
    WHERE id = (SELECT id FROM latest WHERE type = %(type)s AND reason = %(reason)s AND message = %(message)s)
    RETURNING id
), added AS (
    INSERT INTO events (id, created_at, object_kind, object_id, type, reason, message, count, last_seen)
    SELECT %(id)s, %(now)s, %(object_kind)s, %(object_id)s, %(type)s, %(reason)s, %(message)s, 1, %(now)s
    WHERE NOT EXISTS (SELECT 1 FROM bumped) {guard}
    RETURNING id
)"""


#: Record one event: one statement.
_RECORD = f"WITH {_recording()} SELECT 1"

#: Write an object's status and, when that wrote, record its event: one statement.
_WRITTEN = "AND EXISTS (SELECT 1 FROM written)"
_STATUS_AND_RECORD = "WITH written AS ({update} RETURNING 1), " + _recording(_WRITTEN) + " SELECT count(*) FROM written"


@transactional
def record_event(
    object_kind: str, object_id: uuid.UUID | str, reason: str, message: str, *, type: str = NORMAL
) -> None:
    """Record that ``reason``/``message`` happened to the object (a repeat of its latest event counts up)."""
    Event._meta.database.execute_sql(_RECORD, _event_params(object_kind, object_id, reason, message, type))


@transactional(single_statement=True)
def write_status_and_record(
    model: type[ReconciledModel],
    object_id: uuid.UUID | str,
    *,
    generation: int,
    status: Mapping[str, Any],
    reason: str,
    message: str,
    type: str = NORMAL,
    observed: bool = True,
    **flags: bool,
) -> bool:
    """:func:`~models.store.write_status` and, when it wrote, :func:`record_event`: whether it wrote.

    One statement, so one round trip where the two in a transaction take
    four; the reconcile actor reports every outcome this way.
    """
    update, params = store.status_update(
        model, object_id, generation=generation, status=status, observed=observed, **flags
    )
    params.update(_event_params(model.kind, object_id, reason, message, type))
    sql = _STATUS_AND_RECORD.replace("{update}", update)
    return statements.execute(Event._meta.database, [(sql, params)]).fetchone()[0] == 1


def _event_params(object_kind: str, object_id: uuid.UUID | str, reason: str, message: str, type: str) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "now": utcnow(),
        "object_kind": object_kind,
        "object_id": str(object_id if isinstance(object_id, uuid.UUID) else uuid.UUID(str(object_id))),
        "type": type,
        "reason": reason,
        "message": message,
    }


@on_removal
def _forget_events(kind: str, object_id: uuid.UUID) -> None:
    Event.delete().where(Event.object_id == object_id).execute()
