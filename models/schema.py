"""How a kind looks over the API: its fields by API name, with a JSON Schema each.

The Peewee model is the one source: the API's validation
(:mod:`models.validation`), its responses, the OpenAPI document and the
CLI's discovery all read a kind through :func:`fields_of`. A reference to
another object is a foreign key named ``workload_definition`` in Python and
``workload_definition_id`` over the API (its column); a secret field
(:class:`~models.secrets.EncryptedField`) is written but never read back;
a JSON field says what it holds with :class:`JSONDocument`'s schema.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import peewee
from playhouse.postgres_ext import BinaryJSONField

from .base import KindModel

__all__ = ["BoundedInteger", "FieldInfo", "JSONDocument", "fields_of", "python_types", "MAX_NAME_LENGTH"]

#: Longest ``name`` accepted (as Kubernetes object names).
MAX_NAME_LENGTH = 253

#: Peewee field class → (JSON Schema, Python types a JSON body may give). First match wins.
_TYPES: tuple[tuple[type[peewee.Field], dict[str, Any], tuple[type, ...]], ...] = (
    (peewee.ForeignKeyField, {"type": "string", "format": "uuid"}, (uuid.UUID, str)),
    (peewee.BooleanField, {"type": "boolean"}, (bool,)),
    (peewee.IntegerField, {"type": "integer"}, (int,)),
    (peewee.FloatField, {"type": "number"}, (int, float)),
    (peewee.UUIDField, {"type": "string", "format": "uuid"}, (uuid.UUID, str)),
    (peewee.DateTimeField, {"type": "string", "format": "date-time"}, (dt.datetime,)),
    (peewee.TextField, {"type": "string"}, (str,)),
    (peewee.CharField, {"type": "string"}, (str,)),
)


class JSONDocument(BinaryJSONField):
    """A JSONB field whose content is described (and checked) by a JSON Schema."""

    def __init__(self, schema: Optional[dict[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.schema = schema or {"type": "object"}


class BoundedInteger(peewee.IntegerField):
    """An integer the kind holds to ``minimum``..``maximum`` (inclusive): checked on write, shown in OpenAPI."""

    def __init__(self, minimum: int, maximum: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.minimum, self.maximum = minimum, maximum


@dataclass(frozen=True)
class FieldInfo:
    """One field of a kind as the API sees it."""

    #: The name in JSON bodies, query strings and the OpenAPI document.
    name: str
    #: The Peewee field behind it.
    field: peewee.Field
    #: The JSON Schema of a value (without null).
    schema: dict[str, Any]
    #: Whether a client may set it.
    writable: bool
    #: Whether a create must give it.
    required: bool
    #: Whether it may be null.
    nullable: bool
    #: Written but never returned (encrypted at rest).
    secret: bool
    #: The kind a reference points to, or None.
    references: Optional[str]
    #: Whether a reference goes with its target (a child row), rather than protecting it from deletion.
    cascades: bool
    description: str

    def value_schema(self) -> dict[str, Any]:
        """The JSON Schema of a value, null included when allowed."""
        if not self.nullable:
            return dict(self.schema)
        return {"anyOf": [dict(self.schema), {"type": "null"}]}


def python_types(field: peewee.Field) -> tuple[type, ...]:
    """The Python types a JSON body may give for ``field`` (empty: any JSON)."""
    return next((types for cls, _, types in _TYPES if isinstance(field, cls)), ())


@functools.lru_cache(maxsize=None)
def fields_of(model: type[KindModel]) -> dict[str, FieldInfo]:
    """``model``'s fields by API name, in declaration order."""
    writable = model.user_fields()
    return {info.name: info for info in (_info(model, field, writable) for field in model._meta.sorted_fields)}


def _info(model: type[KindModel], field: peewee.Field, writable: frozenset[str]) -> FieldInfo:
    is_reference = isinstance(field, peewee.ForeignKeyField)
    schema = _schema_of(field)
    if field.name == "name":
        schema.update(minLength=1, maxLength=MAX_NAME_LENGTH)
    if field.choices:
        schema["enum"] = [value for value, _ in field.choices]
    if isinstance(field, BoundedInteger):
        schema.update(minimum=field.minimum, maximum=field.maximum)
    secret = getattr(field, "secret", False)
    has_default = field.default is not None
    if has_default and not callable(field.default):
        schema["default"] = field.default
    return FieldInfo(
        name=field.column_name if is_reference else field.name,
        field=field,
        schema=schema,
        writable=field.name in writable,
        required=field.name in writable and not has_default and not field.null,
        nullable=field.null,
        secret=secret,
        references=getattr(field.rel_model, "kind", field.rel_model.__name__) if is_reference else None,
        cascades=is_reference and (field.on_delete or "").upper() == "CASCADE",
        description=field.help_text or "",
    )


def _schema_of(field: peewee.Field) -> dict[str, Any]:
    if getattr(field, "json_schema", None) is not None:  # an extension kind's property
        return dict(field.json_schema)
    if isinstance(field, JSONDocument):
        return dict(field.schema)
    if isinstance(field, BinaryJSONField):
        return {"type": "object"}
    return dict(next((schema for cls, schema, _ in _TYPES if isinstance(field, cls)), {}))
