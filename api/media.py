"""Request bodies: JSON that the database can store, or a clear 4xx.

Python's JSON parser accepts more than JSON (``NaN``, ``Infinity``) and more
than PostgreSQL stores: a string with NUL (``\\u0000``) or with half of a
surrogate pair (``\\ud800``) is valid JSON, but a text column refuses the
first and UTF-8 cannot encode the second, and a number like ``1e400`` becomes
an infinity that no JSON answer can carry back. :func:`loads` refuses all of
these up front, naming where in the body it found them, and a body nested so
deep that the parser gives up is malformed like any other (400).
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

import falcon
from falcon.media import JSONHandler

__all__ = ["JSON_MEDIA_TYPES", "json_handler", "loads"]

#: The media types a body is read as JSON from (a merge patch is JSON too).
JSON_MEDIA_TYPES = ("application/json", "application/merge-patch+json")


def json_handler() -> JSONHandler:
    """Falcon's JSON handler with :func:`loads` (answers are written as Falcon writes them)."""
    return JSONHandler(loads=loads)


def loads(text: str) -> Any:
    """The JSON value of ``text``: 400 for what is not JSON, 422 for strings the database cannot store."""
    try:
        value = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise falcon.HTTPBadRequest(
            title="Malformed JSON", description="The body is nested too deeply to be read."
        ) from None
    except json.JSONDecodeError:
        raise
    except ValueError:  # Python's cap on an integer's digits (4,300), the one other error of a valid document
        raise falcon.HTTPBadRequest(
            title="Malformed JSON", description="A number in the body has too many digits to be read."
        ) from None
    _check(value)
    return value


def _not_json(constant: str) -> NoReturn:
    raise falcon.HTTPBadRequest(
        title="Malformed JSON", description=f"{constant} is not a JSON number: JSON has no NaN or infinity."
    )


def _check(value: Any) -> None:
    """Walk ``value`` (without recursion: the parser allows deeper nesting than Python's stack)."""
    pending: list[tuple[Any, str]] = [(value, "")]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            _check_text(item, path or "the body")
        elif isinstance(item, dict):
            for key, inner in item.items():
                where = f"{path}.{key}" if path else key
                _check_text(key, f"the key {where!r}")
                pending.append((inner, where))
        elif isinstance(item, list):
            pending.extend((inner, f"{path}[{index}]") for index, inner in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise falcon.HTTPUnprocessableEntity(
                title="Invalid Object", description=f"{path or 'the body'}: the number is too large"
            )


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise falcon.HTTPUnprocessableEntity(
            title="Invalid Object", description=f"{where}: text must not contain NUL (\\u0000)"
        )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise falcon.HTTPUnprocessableEntity(
                title="Invalid Object",
                description=f"{where}: text must not contain half of a surrogate pair (\\ud800-\\udfff)",
            ) from None
