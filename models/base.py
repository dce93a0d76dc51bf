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
from typing import Any, ClassVar

import peewee
from playhouse.postgres_ext import BinaryJSONField, DateTimeTZField

from .database import db

__all__ = [
    "BaseModel",
    "KindModel",
    "RecordModel",
    "ReconciledModel",
    "LIFECYCLE_FIELDS",
    "UTCDateTimeField",
    "utcnow",
]


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


class KindModel(BaseModel):
    """Anything the API serves as a kind (abstract): an ``id``, a ``created_at``, a name and a URL plural.

    Two families derive from it. :class:`ReconciledModel` is an object the
    control plane reconciles (full CRUD, a lifecycle, an outbox row per
    change); :class:`RecordModel` is a plain row that other code writes and
    the API lists (events, parsed documents, references between objects).
    """

    #: The kind's name in the API and in messages, e.g. ``"WorkloadDefinition"``.
    kind: ClassVar[str]
    #: The URL segment of the kind, e.g. ``"workload-definitions"``.
    plural: ClassVar[str]
    #: One line on what the kind is (the OpenAPI document and ``threeport get`` show it).
    summary: ClassVar[str] = ""

    id = peewee.UUIDField(primary_key=True, default=uuid.uuid4)
    created_at = UTCDateTimeField(default=utcnow)

    @classmethod
    def collection_path(cls) -> str:
        """Where the API serves the kind's objects, e.g. ``/v0/workload-instances``."""
        return f"/v0/{cls.plural}"

    @classmethod
    def user_fields(cls) -> frozenset[str]:
        """The fields (by model field name) a client may write."""
        return frozenset()

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        """Check an object as it would be saved (every user field, by field name); raise InvalidObject.

        Kinds override it for rules across fields; each field's type, choices
        and references are checked before it is called.
        """


class RecordModel(KindModel):
    """A plain row the API lists (abstract): no lifecycle, no reconcile, never updated by clients."""

    #: Whether clients may create and delete it (otherwise it is read-only over the API).
    client_writable: ClassVar[bool] = False
    #: The fields a client sets on create (when ``client_writable``).
    create_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def user_fields(cls) -> frozenset[str]:
        return frozenset(cls.create_fields) if cls.client_writable else frozenset()


class ReconciledModel(KindModel):
    """An object the control plane reconciles (abstract: no table, never registered)."""

    #: The Dramatiq queue its reconciliations go to, e.g. ``"workloads"``.
    queue: ClassVar[str]
    #: The fields a user may set (besides ``name``); a change to any of them is a new generation.
    #: Empty means every field the kind declares beyond the lifecycle's.
    spec_fields: ClassVar[tuple[str, ...]] = ()
    #: References (foreign-key fields) that must be reconciled before this object is:
    #: until they are, its reconcile waits (requeued with backoff, no retry spent).
    depends_on: ClassVar[tuple[str, ...]] = ()
    #: The Dramatiq actor that reconciles it.
    actor: ClassVar[str] = "reconcile"
    #: What a 409 says when a write breaks one of the kind's unique constraints (by constraint name).
    unique_constraints: ClassVar[dict[str, str]] = {}
    #: Whether a controller reconciles it: when not, writes enqueue nothing and deletion is immediate.
    reconcilable: ClassVar[bool] = True

    name = peewee.TextField(unique=True)
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
        """The fields a client may write: ``name``, the spec fields and ``interrupt_reconciliation``."""
        return frozenset(("name", *cls.generation_fields()))

    @classmethod
    def generation_fields(cls) -> frozenset[str]:
        """The fields whose change is a new generation: the spec fields and ``interrupt_reconciliation``.

        Setting ``interrupt_reconciliation`` stops the object's reconciles (the
        next one reports ``Interrupted`` and builds nothing); clearing it
        reconciles the object as it is then.
        """
        return frozenset(("interrupt_reconciliation", *cls.spec_fields))


#: The fields every reconciled kind has, which no client writes (besides ``name`` and ``interrupt_reconciliation``).
LIFECYCLE_FIELDS = frozenset(ReconciledModel._meta.fields)
