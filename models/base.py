"""Base models: every table's, and the lifecycle of reconciled objects.

:class:`ReconciledModel` carries the fields of DESIGN.md's object lifecycle
and, as class attributes, what the API and the relay need to route work
without importing ``tasks``: the kind, its URL plural, its queue and its
actor. It has no table of its own: each concrete kind declares its spec
fields, gets a table from a migration and registers itself in
:mod:`models.registry`. The store (:mod:`models.store`) is the only writer
of the lifecycle fields.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import ClassVar

import peewee
from playhouse.postgres_ext import BinaryJSONField, DateTimeTZField

from .database import db

__all__ = ["BaseModel", "ReconciledModel", "UTCDateTimeField", "utcnow"]


def utcnow() -> dt.datetime:
    """Now, timezone-aware, in UTC."""
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTimeField(DateTimeTZField):
    """A ``TIMESTAMPTZ`` read back in UTC, whatever the session's time zone."""

    def python_value(self, value):
        value = super().python_value(value)
        return value.astimezone(dt.timezone.utc) if isinstance(value, dt.datetime) else value


class BaseModel(peewee.Model):
    """Every table's base: bound to :data:`models.database.db`."""

    class Meta:
        database = db
        legacy_table_names = False


class ReconciledModel(BaseModel):
    """An object the control plane reconciles (abstract: no table, never registered)."""

    #: The kind's name in the API and in messages, e.g. ``"WorkloadDefinition"``.
    kind: ClassVar[str]
    #: The URL segment of the kind, e.g. ``"workload-definitions"``.
    plural: ClassVar[str]
    #: The Dramatiq queue its reconciliations go to, e.g. ``"workloads"``.
    queue: ClassVar[str]
    #: The fields a user may set (besides ``name``); a change to any of them is a new generation.
    spec_fields: ClassVar[tuple[str, ...]] = ()
    #: The Dramatiq actor that reconciles it.
    actor: ClassVar[str] = "reconcile"

    id = peewee.UUIDField(primary_key=True, default=uuid.uuid4)
    name = peewee.TextField(unique=True)
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)
    #: Bumped on every spec change (and when deletion is scheduled).
    generation = peewee.BigIntegerField(default=1)
    #: The generation the reconciler last finished with; 0 until it first does.
    observed_generation = peewee.BigIntegerField(default=0)
    reconciled = peewee.BooleanField(default=False)
    creation_acknowledged = peewee.BooleanField(default=False)
    creation_confirmed = peewee.BooleanField(default=False)
    creation_failed = peewee.BooleanField(default=False)
    #: When deletion was asked for; None while the object lives.
    deletion_scheduled = UTCDateTimeField(null=True)
    deletion_acknowledged = peewee.BooleanField(default=False)
    deletion_confirmed = peewee.BooleanField(default=False)
    interrupt_reconciliation = peewee.BooleanField(default=False)
    #: What the reconciler reports: ``phase``, ``message``, ``conditions``.
    status = BinaryJSONField(default=dict)
    #: Bumped on every write; the HTTP ETag, checked against ``If-Match``.
    resource_version = peewee.BigIntegerField(default=1)

    @classmethod
    def user_fields(cls) -> frozenset[str]:
        """The fields a client may write: ``name`` and the spec fields."""
        return frozenset(("name", *cls.spec_fields))
