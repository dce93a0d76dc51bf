"""The store: every read and write of reconciled objects, each one retried transaction.

A write changes the object's row and, when the reconciler has new work (a
new generation), inserts the outbox row in the same transaction; it returns
both (:class:`Written`) so the caller can publish the outbox rows right
after commit. ``resource_version`` is bumped by every write and is the
optimistic lock: a write given ``if_match`` applies only to that version,
as a compare-and-set (``UPDATE … WHERE id = ? AND resource_version = ?``).
``generation`` is bumped when the spec changes or deletion is scheduled;
the reconciler writes its status guarded by the generation it read, so a
reconcile of an outdated spec cannot overwrite a newer one's.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Mapping, Optional, TypeVar

import peewee

from . import statements
from .base import LIFECYCLE_FIELDS, KindModel, ReconciledModel, RecordModel, utcnow
from .errors import Conflict, InvalidObject, NotFound, PreconditionFailed, sqlstate
from .outbox import Outbox
from .transactions import run_in_transaction, transactional
from .validation import checked_fields, checked_status, filter_value

__all__ = [
    # Writes
    "Written",
    "create",
    "update",
    "schedule_deletion",
    "confirm_deletion",
    "write_status",
    "status_update",
    "merge_status",
    "request_reconcile",
    "write_fields",
    # Records
    "create_record",
    "delete_record",
    "on_removal",
    # Reads
    "get",
    "list_objects",
    "unreconciled",
    "MAX_PAGE_SIZE",
    "STATUS_FLAGS",
    # The relay's side of the outbox
    "pending_outbox",
    "delete_outbox",
]

M = TypeVar("M", bound=ReconciledModel)
K = TypeVar("K", bound=KindModel)
R = TypeVar("R", bound=RecordModel)

#: Called with (kind, object id) in the transaction that removes a reconciled object's row
#: (its events and references go with it); see :func:`on_removal`.
_on_removal: list[Callable[[str, uuid.UUID], None]] = []

#: Largest ``limit`` of one :func:`list_objects` page.
MAX_PAGE_SIZE = 1000

#: Lifecycle flags the reconciler may set with :func:`write_status`.
STATUS_FLAGS = frozenset(
    {
        "reconciled",
        "creation_acknowledged",
        "creation_confirmed",
        "creation_failed",
        "deletion_acknowledged",
        "interrupt_reconciliation",
    }
)


@dataclass(frozen=True)
class Written(Generic[M]):
    """An object as saved, and the outbox rows its transaction inserted (to publish after commit)."""

    obj: M
    outbox: list[Outbox] = field(default_factory=list)


# Writes ---------------------------------------------------------------------------


def create(model: type[M], fields: Mapping[str, Any]) -> Written[M]:
    """Insert a new object at generation 1 and ask for its reconciliation.

    The object's row and its outbox row go to the database together, in one
    round trip; an object that references others is checked and inserted in
    a transaction, since its references must still be there at the commit.
    Their ids are chosen once, so that a run again after a lost answer (the
    rows may be in) finds them there rather than failing on the name.

    Raises InvalidObject (unknown, server-managed, missing or bad field) or
    Conflict (the name is taken).
    """
    values = checked_fields(model, fields, creating=True)
    references = any(
        value is not None and isinstance(model._meta.fields[name], peewee.ForeignKeyField)
        for name, value in values.items()
    )
    ids = (uuid.uuid4(), uuid.uuid4())
    return run_in_transaction(lambda: _create(model, values, *ids), single_statement=not references)


def _create(model: type[M], values: dict[str, Any], object_id: uuid.UUID, outbox_id: uuid.UUID) -> Written[M]:
    _check_object(model, values, values)
    now = utcnow()
    obj = model(**values, id=object_id, created_at=now, updated_at=now)
    outbox = _outbox_rows(obj, id=outbox_id)
    with _unique(model, obj.name):
        statements.insert(obj, *outbox, if_absent=True)
    return Written(obj, outbox)


@transactional
def update(
    model: type[M], object_id: uuid.UUID | str, fields: Mapping[str, Any], *, if_match: Optional[int] = None
) -> Written[M]:
    """Change some of an object's user fields; a spec change is a new generation to reconcile.

    Fields given with the values they have change nothing; when none
    changes, nothing is written (``resource_version`` stays).

    Raises NotFound, PreconditionFailed (``if_match`` is not the stored
    ``resource_version``, or another write won the race), InvalidObject,
    or Conflict (the new name is taken, or deletion is scheduled).
    """
    given = checked_fields(model, fields, creating=False)
    obj = _load_for_write(model, object_id, if_match=if_match)
    if obj.deletion_scheduled is not None:
        raise Conflict(f"{model.kind} {obj.id} is being deleted and can no longer change")
    changes = {name: value for name, value in given.items() if obj.__data__.get(name) != value}
    if not changes:
        return Written(obj)  # nothing changes: nothing is written
    _check_object(model, {name: obj.__data__.get(name) for name in model.user_fields()} | changes, changes)
    spec_changed = not model.generation_fields().isdisjoint(changes)
    values = {**changes, "updated_at": utcnow(), "resource_version": obj.resource_version + 1}
    if spec_changed:  # a generation no reconcile has seen: not reconciled until one has
        values.update(generation=obj.generation + 1, reconciled=False)
    with _unique(model, changes.get("name")):
        _compare_and_set(obj, values)
    return Written(obj, _enqueued(obj) if spec_changed else [])


@transactional
def schedule_deletion(model: type[M], object_id: uuid.UUID | str, *, if_match: Optional[int] = None) -> Written[M]:
    """Mark an object for deletion (a new generation) and ask the reconciler to tear it down.

    Asking again changes nothing and enqueues nothing. Raises NotFound or
    PreconditionFailed.
    """
    obj = _load_for_write(model, object_id, if_match=if_match)
    if obj.deletion_scheduled is not None:
        return Written(obj)
    _must_not_be_referenced(obj)
    now = utcnow()
    if not model.reconcilable:  # nothing to tear down: gone at once
        obj.deletion_scheduled = obj.updated_at = now
        _remove(obj)
        return Written(obj)
    _compare_and_set(
        obj,
        {
            "deletion_scheduled": now,
            "updated_at": now,
            "generation": obj.generation + 1,
            "resource_version": obj.resource_version + 1,
        },
    )
    return Written(obj, _enqueued(obj))


@transactional
def confirm_deletion(model: type[ReconciledModel], object_id: uuid.UUID | str) -> bool:
    """Delete the row of an object whose deletion was scheduled: whether it was there to delete.

    Confirming twice is harmless (False the second time). Raises Conflict
    when deletion was never scheduled, or other rows still reference it.
    """
    obj = _find(model, object_id, for_update=True)
    if obj is None:
        return False
    if obj.deletion_scheduled is None:
        raise Conflict(f"{model.kind} {obj.id} cannot be removed: its deletion is not scheduled")
    _must_not_be_referenced(obj)
    _remove(obj)
    return True


@transactional
def write_status(
    model: type[ReconciledModel],
    object_id: uuid.UUID | str,
    *,
    generation: int,
    status: Mapping[str, Any],
    observed: bool = True,
    **flags: bool,
) -> bool:
    """Record the reconciler's outcome for ``generation``: whether it was written.

    Nothing is written (False) when the object is gone or its generation is
    no longer ``generation``: a newer spec is waiting for its own reconcile.
    ``observed=False`` records the status without marking the generation
    observed (a temporary failure that will be retried). ``flags`` are
    lifecycle flags from :data:`STATUS_FLAGS`; those not given keep their value.
    ``status`` keys replace those of the stored status; other keys stay (a
    reconciler's ``inventory``, say: see :func:`merge_status`).
    """
    update = status_update(model, object_id, generation=generation, status=status, observed=observed, **flags)
    return statements.execute(model._meta.database, [update]).rowcount == 1


def status_update(
    model: type[ReconciledModel],
    object_id: uuid.UUID | str,
    *,
    generation: int,
    status: Mapping[str, Any],
    observed: bool = True,
    **flags: bool,
) -> tuple[str, dict[str, Any]]:
    """The UPDATE statement (SQL, named parameters) of :func:`write_status`, for a statement that embeds it."""
    unknown = set(flags) - STATUS_FLAGS
    if unknown:
        raise TypeError(f"write_status() got unknown flags {sorted(unknown)}")
    values: dict[str, Any] = {"updated_at": utcnow(), **flags}
    if observed:
        values["observed_generation"] = generation
    return statements.update(
        model,
        _parse_id(model, object_id),
        values,
        increment=("resource_version",),
        merge={"status": checked_status(status)},
        where={"generation": generation},
    )


@transactional
def request_reconcile(model: type[M], object_ids: Iterable[uuid.UUID | str]) -> list[Outbox]:
    """Ask for the objects to be reconciled again although their spec did not change: the outbox rows written.

    For an object whose inputs changed elsewhere (its definition's
    documents, the connection details of a database made for it): a new
    generation, so the reconcile is not skipped as already observed.
    Objects gone or being deleted are left alone.
    """
    rows = []
    ids = [_parse_id(model, object_id) for object_id in object_ids]
    if not ids:
        return rows
    query = model.select().where(model.id.in_(ids) & model.deletion_scheduled.is_null()).for_update()
    for obj in query:
        _compare_and_set(
            obj,
            # reconciled stays: what depends on the object need not wait for a refresh
            {"generation": obj.generation + 1, "resource_version": obj.resource_version + 1, "updated_at": utcnow()},
        )
        rows.extend(_enqueued(obj))
    return rows


@transactional
def merge_status(model: type[ReconciledModel], object_id: uuid.UUID | str, status: Mapping[str, Any]) -> bool:
    """Merge ``status`` keys into an object's status whatever its generation: whether it is still there.

    For what a reconciler must not lose, such as the inventory of the cloud
    resources it made so far: those exist whichever generation made them.
    Neither the generation nor the lifecycle flags change.
    """
    values, merge = {"updated_at": utcnow()}, {"status": checked_status(status)}
    object_uuid = _parse_id(model, object_id)
    return statements.update_by_id(model, object_uuid, values, increment=("resource_version",), merge=merge) == 1


@transactional
def write_fields(model: type[ReconciledModel], object_id: uuid.UUID | str, values: Mapping[str, Any]) -> bool:
    """Set fields the reconciler owns (neither a client's nor the lifecycle's): whether the object is still there.

    Such as a generated password: no new generation, no outbox row. Raises
    TypeError for a field a client writes or the lifecycle manages.
    """
    owned = set(model._meta.fields) - set(model.user_fields()) - LIFECYCLE_FIELDS
    wrong = set(values) - owned
    if wrong:
        raise TypeError(f"write_fields() cannot set {sorted(wrong)} of {model.kind}")
    changes = {**values, "updated_at": utcnow(), "resource_version": model.resource_version + 1}
    return model.update(changes).where(model.id == _parse_id(model, object_id)).execute() == 1


# Reads ----------------------------------------------------------------------------


@transactional(single_statement=True)
def get(model: type[K], object_id: uuid.UUID | str) -> K:
    """The object with ``object_id``; raises NotFound."""
    return _load(model, object_id)


@transactional
def list_objects(
    model: type[K],
    *,
    limit: int = 50,
    after: Optional[str] = None,
    filters: Optional[Mapping[str, Any]] = None,
    newest_first: bool = False,
) -> tuple[list[K], Optional[str]]:
    """One page of objects, oldest first (newest first with ``newest_first``), and the next page's cursor.

    The cursor is None on the last page.

    Pages are keyset-paginated on (``created_at``, ``id``): a page is stable
    under concurrent inserts and costs the same however deep. ``filters``
    compare fields for equality (``{"name": "web"}``); values may be text.

    Raises InvalidObject for a bad limit, cursor or filter.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidObject(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    query = model.select()
    for name, value in (filters or {}).items():
        field, value = filter_value(model, name, value)
        query = query.where(field == value)
    key = peewee.Tuple(model.created_at, model.id)
    if after is not None:
        created_at, object_id = _decode_cursor(after)
        cursor = peewee.Tuple(created_at, object_id)
        query = query.where(key < cursor if newest_first else key > cursor)
    order = (model.created_at.desc(), model.id.desc()) if newest_first else (model.created_at, model.id)
    rows = list(query.order_by(*order).limit(limit + 1))
    page = rows[:limit]
    return page, (_encode_cursor(page[-1]) if len(rows) > limit else None)


@transactional
def unreconciled(model: type[M], *, older_than_seconds: float, limit: int) -> list[M]:
    """Objects left unreconciled for ``older_than_seconds``, least recently updated first (the resync sweep).

    That is a generation not observed yet, or a scheduled deletion (the row
    goes once the deletion is confirmed, so a row whose deletion is
    scheduled is one not confirmed yet).
    """
    pending = (model.generation != model.observed_generation) | model.deletion_scheduled.is_null(False)
    query = model.select().where(pending & (model.updated_at <= _ago(older_than_seconds)))
    return list(query.order_by(model.updated_at).limit(limit))


# Records (rows the API lists; some clients create and delete) ----------------------


@transactional
def create_record(model: type[R], fields: Mapping[str, Any]) -> R:
    """Insert a record a client may create; raises InvalidObject or Conflict (it exists already)."""
    values = checked_fields(model, fields, creating=True)
    _check_object(model, values, values)
    row = model(**values)
    try:
        row.save(force_insert=True)
    except peewee.IntegrityError as exc:
        if sqlstate(exc) == "23505":
            raise Conflict(f"this {model.kind} exists already") from exc
        raise
    return row


@transactional
def delete_record(model: type[RecordModel], object_id: uuid.UUID | str) -> None:
    """Delete a record at once; raises NotFound."""
    if model.delete().where(model.id == _parse_id(model, object_id)).execute() != 1:
        raise NotFound(f"no {model.kind} with id {str(object_id)!r}")


def on_removal(forget: Callable[[str, uuid.UUID], None]) -> Callable[[str, uuid.UUID], None]:
    """Register ``forget(kind, object_id)``, called in the transaction that removes an object's row."""
    _on_removal.append(forget)
    return forget


# The outbox, for the relay --------------------------------------------------------


@transactional
def pending_outbox(*, older_than_seconds: float, limit: int) -> list[Outbox]:
    """Outbox rows older than ``older_than_seconds`` (left over by the fast path), oldest first."""
    query = Outbox.select().where(Outbox.created_at <= _ago(older_than_seconds))
    return list(query.order_by(Outbox.created_at).limit(limit))


@transactional
def delete_outbox(ids: Iterable[uuid.UUID | str]) -> int:
    """Delete outbox rows (once published); how many there were."""
    ids = list(ids)
    if not ids:
        return 0
    return Outbox.delete().where(Outbox.id.in_(ids)).execute()


# Helpers --------------------------------------------------------------------------


def _parse_id(model: type[KindModel], object_id: uuid.UUID | str) -> uuid.UUID:
    try:
        return object_id if isinstance(object_id, uuid.UUID) else uuid.UUID(str(object_id))
    except ValueError:
        raise NotFound(f"no {model.kind} with id {object_id!r}") from None


def _find(model: type[K], object_id: uuid.UUID | str, *, for_update: bool = False) -> Optional[K]:
    return statements.select_by_id(model, _parse_id(model, object_id), for_update=for_update)


def _load(model: type[K], object_id: uuid.UUID | str, *, for_update: bool = False) -> K:
    obj = _find(model, object_id, for_update=for_update)
    if obj is None:
        raise NotFound(f"no {model.kind} with id {str(object_id)!r}")
    return obj


def _check_object(model: type[KindModel], values: dict[str, Any], changed: Mapping[str, Any]) -> None:
    """The references among ``changed`` exist and live, and the kind's own rules hold for ``values``."""
    for name, value in changed.items():
        field = model._meta.fields[name]
        if isinstance(field, peewee.ForeignKeyField) and value is not None:
            _must_be_referable(field, value)
    model.check(values)


def _must_be_referable(field: peewee.ForeignKeyField, target_id: uuid.UUID) -> None:
    target = field.rel_model
    kind = getattr(target, "kind", target.__name__)
    columns = [target.id] + ([target.deletion_scheduled] if issubclass(target, ReconciledModel) else [])
    row = target.select(*columns).where(target.id == target_id).first()
    if row is None:
        raise InvalidObject(f"field {field.column_name!r}: no {kind} with id {str(target_id)!r}")
    if getattr(row, "deletion_scheduled", None) is not None:
        raise InvalidObject(f"field {field.column_name!r}: {kind} {target_id} is being deleted")


def _must_not_be_referenced(obj: ReconciledModel) -> None:
    """Raise Conflict when objects that are not children of ``obj`` still reference it."""
    for fk, referrer in type(obj)._meta.backrefs.items():
        if (fk.on_delete or "").upper() == "CASCADE":
            continue
        label = referrer.name if "name" in referrer._meta.fields else referrer.id
        names = [str(row) for (row,) in referrer.select(label).where(fk == obj.id).limit(4).tuples()]
        if names:
            shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
            kind = getattr(referrer, "kind", referrer.__name__)
            raise Conflict(f"{obj.kind} {obj.name!r} is still referenced by {kind} {shown}: delete them first")


def _load_for_write(model: type[M], object_id: uuid.UUID | str, *, if_match: Optional[int]) -> M:
    """The object, row-locked, once ``if_match`` (when given) is known to match its version."""
    obj = _load(model, object_id, for_update=True)
    if if_match is not None and _version(if_match) != obj.resource_version:
        raise PreconditionFailed(f"{model.kind} {obj.id} is at resource_version {obj.resource_version}, not {if_match}")
    return obj


def _version(if_match: Any) -> Optional[int]:
    try:
        return int(if_match)
    except (TypeError, ValueError):
        return None  # matches no version


def _compare_and_set(obj: ReconciledModel, values: dict[str, Any]) -> None:
    """Write ``values`` to ``obj``'s row if it is still at the version read, and to ``obj``."""
    model = type(obj)
    query = model.update(values).where((model.id == obj.id) & (model.resource_version == obj.resource_version))
    if query.execute() != 1:
        raise PreconditionFailed(f"{model.kind} {obj.id} was changed by another write")
    for name, value in values.items():
        setattr(obj, name, value)


@contextlib.contextmanager
def _unique(model: type[ReconciledModel], name: Optional[str]):
    """Turn a unique violation into a Conflict that says which: the name, or a rule of the kind."""
    try:
        yield
    except peewee.IntegrityError as exc:
        if sqlstate(exc) != "23505":
            raise
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
        if constraint in model.unique_constraints:
            raise Conflict(model.unique_constraints[constraint]) from exc
        if name is not None:
            raise Conflict(f"a {model.kind} named {name!r} already exists") from exc
        raise


def _remove(obj: ReconciledModel) -> None:
    for forget in _on_removal:
        forget(obj.kind, obj.id)
    obj.delete_instance()


def _enqueued(obj: ReconciledModel) -> list[Outbox]:
    """The outbox row asking for ``obj``'s reconcile, saved; none for a kind nobody reconciles."""
    rows = _outbox_rows(obj)
    statements.insert(*rows)
    return rows


def _outbox_rows(obj: ReconciledModel, **fields: Any) -> list[Outbox]:
    """The outbox row asking for ``obj``'s reconcile, not saved yet; none for a kind nobody reconciles."""
    return [Outbox.for_object(obj, **fields)] if obj.reconcilable else []


def _ago(seconds: float) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=seconds)


def _encode_cursor(obj: KindModel) -> str:
    raw = f"{obj.created_at.isoformat()}|{obj.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, object_id = raw.split("|")
        return dt.datetime.fromisoformat(created_at), uuid.UUID(object_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidObject(f"invalid cursor {cursor!r}") from None
