"""What a client may write and filter on, checked before any SQL runs.

A client writes its kind's writable fields, by their API names
(:mod:`models.schema`); every other field is server-managed and refused by
name, as is any field the kind does not have, so a typo never passes
silently. Values are checked against the field's type, choices and JSON
Schema here rather than left to the database, so the message names the
field. Filter values arrive as query-string text and are parsed by the
field's type. Whether a referenced object exists is the store's to check,
in the transaction that writes the reference.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Mapping

import jsonschema
import peewee
from playhouse.postgres_ext import JSONField

from .base import KindModel
from .errors import InvalidObject
from .json_schemas import Validator
from .schema import MAX_NAME_LENGTH, BoundedInteger, FieldInfo, JSONDocument, fields_of, python_types

__all__ = ["checked_fields", "checked_status", "filter_value", "filterable", "MAX_NAME_LENGTH"]

_TEXT_PARSERS: tuple[tuple[type[peewee.Field], Any], ...] = (
    (peewee.BooleanField, lambda text: {"true": True, "false": False}[text.lower()]),
    (peewee.IntegerField, int),
    (peewee.FloatField, float),
    (peewee.ForeignKeyField, uuid.UUID),
    (peewee.UUIDField, uuid.UUID),
    (peewee.TextField, str),
    (peewee.CharField, str),
)


def checked_fields(model: type[KindModel], fields: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """``fields`` (by API name) once each is known to be writable by a client, by model field name.

    On create every required field must be given (``name`` always).

    Raises InvalidObject naming the first offending field.
    """
    if not isinstance(fields, Mapping):
        raise InvalidObject("fields must be an object")
    infos = fields_of(model)
    checked = {}
    for name, value in fields.items():
        info = _writable(model, infos, name)
        checked[info.field.name] = _checked_value(info, value)
    if creating:
        missing = [info.name for info in infos.values() if info.required and info.field.name not in checked]
        if missing:
            raise InvalidObject(f"missing field {missing[0]!r}")
    return checked


def checked_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` once it is known to be a JSON object; raises InvalidObject."""
    if not isinstance(status, Mapping):
        raise InvalidObject("status must be an object")
    status = dict(status)
    _check_json("status", status)
    return status


def filterable(info: FieldInfo) -> bool:
    """Whether lists filter on the field by equality (JSON, timestamps and secrets are not)."""
    return not info.secret and any(isinstance(info.field, kind) for kind, _ in _TEXT_PARSERS)


def filter_value(model: type[KindModel], name: str, value: Any) -> tuple[peewee.Field, Any]:
    """The field called ``name`` over the API and the value to compare it with; text is parsed by the field's type.

    Raises InvalidObject for an unknown field, a field that cannot be
    compared for equality (JSON, timestamps, secrets) or a value that does not parse.
    """
    info = fields_of(model).get(name)
    if info is None:
        raise InvalidObject(f"cannot filter on {name!r}: {model.kind} has no such field")
    if not filterable(info):
        raise InvalidObject(f"cannot filter on {name!r}")
    parse = next(parser for kind, parser in _TEXT_PARSERS if isinstance(info.field, kind))
    if not isinstance(value, str):
        return info.field, _checked_value(info, value)
    try:
        return info.field, parse(value)
    except (KeyError, ValueError):
        raise InvalidObject(f"invalid value for filter {name!r}: {value!r}") from None


def _writable(model: type[KindModel], infos: dict[str, FieldInfo], name: str) -> FieldInfo:
    info = infos.get(name)
    if info is not None and info.writable:
        return info
    if info is not None:
        raise InvalidObject(f"field {name!r} is managed by the server and cannot be set")
    raise InvalidObject(f"unknown field {name!r} for {model.kind}")


def _checked_value(info: FieldInfo, value: Any) -> Any:
    field = info.field
    if value is None:
        if not info.nullable:
            raise InvalidObject(f"field {info.name!r} cannot be null")
        return None
    if isinstance(field, JSONField):
        _check_json(info.name, value)
        if isinstance(field, JSONDocument):
            _check_document(info, value)
        return value
    expected = python_types(field)
    if expected and (not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)):
        names = " or ".join(t.__name__ for t in expected)
        raise InvalidObject(f"field {info.name!r} must be of type {names}, not {type(value).__name__}")
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(field, peewee.IntegerField):
        low, high = _integer_range(field)
        if not low <= value <= high:
            raise InvalidObject(f"field {info.name!r} must be between {low} and {high}, not {value}")
    if field.choices and value not in [choice for choice, _ in field.choices]:
        allowed = ", ".join(repr(choice) for choice, _ in field.choices)
        raise InvalidObject(f"field {info.name!r} must be one of {allowed}, not {value!r}")
    if uuid.UUID in expected:
        try:
            return value if isinstance(value, uuid.UUID) else uuid.UUID(value)
        except ValueError:
            raise InvalidObject(f"field {info.name!r} must be a UUID, not {value!r}") from None
    if field.name == "name":
        _check_name(value)
    return value


def _integer_range(field: peewee.IntegerField) -> tuple[int, int]:
    """The values ``field`` takes: its kind's bounds, else its column's (32 or 64 bits)."""
    if isinstance(field, BoundedInteger):
        return field.minimum, field.maximum
    bits = 63 if isinstance(field, peewee.BigIntegerField) else 31
    return -(2**bits), 2**bits - 1


def _check_document(info: FieldInfo, value: Any) -> None:
    error = jsonschema.exceptions.best_match(Validator(info.schema).iter_errors(value))
    if error is not None:
        where = "".join(f"[{part!r}]" for part in error.absolute_path)
        raise InvalidObject(f"field {info.name!r}{where}: {error.message}")


def _check_json(name: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidObject(f"field {name!r} must be JSON: {exc}") from None


def _check_name(name: str) -> None:
    if not name.strip():
        raise InvalidObject("field 'name' cannot be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidObject(f"field 'name' is longer than {MAX_NAME_LENGTH} characters")
    if not name.isprintable():  # a newline or escape in a name garbles every table and log line showing it
        raise InvalidObject(f"field 'name' must not hold control characters, not {name!r}")
