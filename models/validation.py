"""What a client may write and filter on, checked before any SQL runs.

A client writes ``name`` and its kind's ``spec_fields``; every other field
is server-managed and refused by name, as is any field the kind does not
have, so a typo never passes silently. Values are checked against the
field's type here rather than left to the database, so the message names
the field. Filter values arrive as query-string text and are parsed by the
field's type.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any, Mapping

import peewee
from playhouse.postgres_ext import JSONField

from .base import ReconciledModel
from .errors import InvalidObject

__all__ = ["checked_fields", "checked_status", "filter_value", "MAX_NAME_LENGTH"]

#: Longest ``name`` accepted (as Kubernetes object names).
MAX_NAME_LENGTH = 253

_PYTHON_TYPES: tuple[tuple[type[peewee.Field], tuple[type, ...]], ...] = (
    (peewee.BooleanField, (bool,)),
    (peewee.IntegerField, (int,)),
    (peewee.TextField, (str,)),
    (peewee.CharField, (str,)),
    (peewee.UUIDField, (uuid.UUID, str)),
    (peewee.DateTimeField, (dt.datetime,)),
)
_TEXT_PARSERS: tuple[tuple[type[peewee.Field], Any], ...] = (
    (peewee.BooleanField, lambda text: {"true": True, "false": False}[text.lower()]),
    (peewee.IntegerField, int),
    (peewee.UUIDField, uuid.UUID),
    (peewee.TextField, str),
    (peewee.CharField, str),
)


def checked_fields(model: type[ReconciledModel], fields: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """``fields`` once every name and value is known to be writable by a client.

    On create every field without a default must be given (``name`` always).

    Raises InvalidObject naming the first offending field.
    """
    if not isinstance(fields, Mapping):
        raise InvalidObject("fields must be an object")
    for name, value in fields.items():
        _check_writable(model, name)
        _check_value(model._meta.fields[name], value)
    if creating:
        missing = [name for name in sorted(model.user_fields()) if name not in fields and _required(model, name)]
        if missing:
            raise InvalidObject(f"missing field {missing[0]!r}")
    return dict(fields)


def checked_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` once it is known to be a JSON object; raises InvalidObject."""
    if not isinstance(status, Mapping):
        raise InvalidObject("status must be an object")
    status = dict(status)
    _check_json("status", status)
    return status


def filter_value(model: type[ReconciledModel], name: str, value: Any) -> Any:
    """The value to compare field ``name`` with; text (from a query string) is parsed by the field's type.

    Raises InvalidObject for an unknown field, a field that cannot be
    compared for equality (JSON, timestamps) or a value that does not parse.
    """
    field = model._meta.fields.get(name)
    if field is None:
        raise InvalidObject(f"cannot filter on {name!r}: {model.kind} has no such field")
    parse = next((parser for kind, parser in _TEXT_PARSERS if isinstance(field, kind)), None)
    if parse is None:
        raise InvalidObject(f"cannot filter on {name!r}")
    if not isinstance(value, str):
        _check_value(field, value)
        return value
    try:
        return parse(value)
    except (KeyError, ValueError):
        raise InvalidObject(f"invalid value for filter {name!r}: {value!r}") from None


def _check_writable(model: type[ReconciledModel], name: str) -> None:
    if name in model.user_fields():
        return
    if name in model._meta.fields:
        raise InvalidObject(f"field {name!r} is managed by the server and cannot be set")
    raise InvalidObject(f"unknown field {name!r} for {model.kind}")


def _check_value(field: peewee.Field, value: Any) -> None:
    if value is None:
        if not field.null:
            raise InvalidObject(f"field {field.name!r} cannot be null")
        return
    if isinstance(field, JSONField):
        _check_json(field.name, value)
        return
    expected = next((types for kind, types in _PYTHON_TYPES if isinstance(field, kind)), ())
    if expected and (not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)):
        names = " or ".join(t.__name__ for t in expected)
        raise InvalidObject(f"field {field.name!r} must be of type {names}, not {type(value).__name__}")
    if field.name == "name":
        _check_name(value)


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


def _required(model: type[ReconciledModel], name: str) -> bool:
    field = model._meta.fields[name]
    return field.default is None and not field.null
