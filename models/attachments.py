"""References between objects of any kinds: "this object has that one attached".

Threeport's :class:`AttachedObjectReference`: a reconciler (or a client)
records that an object uses another (a workload instance and the database
built for it, say), so tools can show an object's attached objects and a
teardown can find them. Both ends must exist when the reference is made;
a reference goes when either end's row does. The four fields are unique
together: making the same reference twice is a 409.
"""

from __future__ import annotations

import uuid
from typing import Any

import peewee

from .base import ReconciledModel, RecordModel
from .errors import InvalidObject, NotFound
from .registry import by_kind, register
from .store import on_removal

__all__ = ["AttachedObjectReference"]


@register
class AttachedObjectReference(RecordModel):
    kind = "AttachedObjectReference"
    plural = "attached-object-references"
    summary = "That one object has another attached (e.g. a workload instance and its database)."
    client_writable = True
    create_fields = ("object_type", "object_id", "attached_object_type", "attached_object_id")

    object_type = peewee.TextField(help_text="The kind of the object, e.g. 'WorkloadInstance'.")
    object_id = peewee.UUIDField(help_text="The object's id.")
    attached_object_type = peewee.TextField(help_text="The kind of the attached object.")
    attached_object_id = peewee.UUIDField(help_text="The attached object's id.")

    class Meta:
        table_name = "attached_object_references"
        indexes = (
            (("object_id", "attached_object_id", "object_type", "attached_object_type"), True),
            (("attached_object_id",), False),
        )

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        for type_field, id_field in (("object_type", "object_id"), ("attached_object_type", "attached_object_id")):
            _must_exist(type_field, values[type_field], id_field, values[id_field])


def _must_exist(type_field: str, kind: str, id_field: str, object_id: uuid.UUID) -> None:
    try:
        model = by_kind(kind)
    except NotFound:
        raise InvalidObject(f"field {type_field!r}: no kind named {kind!r}") from None
    if not issubclass(model, ReconciledModel):
        raise InvalidObject(f"field {type_field!r}: {kind} objects cannot be attached")
    if not model.select(model.id).where(model.id == object_id).exists():
        raise InvalidObject(f"field {id_field!r}: no {kind} with id {str(object_id)!r}")


@on_removal
def _forget_references(kind: str, object_id: uuid.UUID) -> None:
    table = AttachedObjectReference
    table.delete().where((table.object_id == object_id) | (table.attached_object_id == object_id)).execute()
