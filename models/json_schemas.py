"""JSON Schema validation whose ``pattern``s run in linear time.

An extension's schema comes from a client, and Python's ``re`` backtracks: a
pattern such as ``(a+)+$`` takes seconds for a 25-character value, doubling
with each character, and holds the GIL (the whole API process) meanwhile.
Here ``pattern`` is matched by RE2 (``google-re2``), which never backtracks;
patterns RE2 cannot run (backreferences, lookaround) are refused when a
schema is registered (:func:`unsupported_patterns`), as is
``patternProperties``, whose matching jsonschema keeps to Python's ``re``.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import jsonschema
import re2

__all__ = ["Validator", "keywords", "unsupported_patterns"]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is said in the 422, not on stderr


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str):
    return re2.compile(pattern, options=_OPTIONS)


def _pattern(validator, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


#: Draft 2020-12, with ``pattern`` matched by RE2.
Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


def keywords(schema: Any) -> Iterator[tuple[str, Any]]:
    """Every key of every object in ``schema``, at any depth, with its value."""
    pending = [schema]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                yield key, value
                pending.append(value)


def unsupported_patterns(schema: Any) -> Iterator[str]:
    """What in ``schema`` :data:`Validator` cannot check in linear time, said for a 422."""
    for key, value in keywords(schema):
        if key == "pattern" and isinstance(value, str):
            try:
                _compiled(value)
            except re2.error as exc:
                reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
                yield f"pattern {value!r} cannot run in linear time ({reason})"
        elif key == "patternProperties":
            yield "patternProperties is not supported (use propertyNames with a pattern)"
