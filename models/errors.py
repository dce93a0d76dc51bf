"""Errors of the models layer, and the translation of database errors into them.

Peewee wraps the driver's errors (``peewee.IntegrityError`` with the psycopg2
error as ``orig``); the API and the workers should not need to know either
library. So a database error is translated once, where it leaves the store
(:func:`models.transactions.run_in_transaction`), by its SQLSTATE, and kept
as the cause. Everything raised here derives from :class:`StoreError`.
"""

from __future__ import annotations

from typing import Optional

import peewee
import psycopg2
from playhouse.pool import MaxConnectionsExceeded

__all__ = [
    "StoreError",
    "NotFound",
    "Conflict",
    "PreconditionFailed",
    "InvalidObject",
    "RetriesExhausted",
    "MigrationError",
    "Unavailable",
    "ConfigurationError",
    "RETRYABLE",
    "sqlstate",
    "translate",
]

#: SQLSTATEs after which the whole transaction may simply run again:
#: serialization failure (PostgreSQL SERIALIZABLE, every CockroachDB retry
#: error) and deadlock detected.
RETRYABLE = frozenset({"40001", "40P01"})

# Errors without a SQLSTATE of these types come from the client side: the
# server could not be reached, or the connection broke.
_CONNECTION_ERRORS = (
    peewee.OperationalError,
    peewee.InterfaceError,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
)


class StoreError(Exception):
    """Raised when the store cannot do what was asked; base of the others."""


class NotFound(StoreError):
    """Raised when no object has the id (or kind) asked for."""


class Conflict(StoreError):
    """Raised when a write clashes with stored state: a duplicate name, a row still referenced, a scheduled deletion."""


class PreconditionFailed(StoreError):
    """Raised when ``if_match`` differs from the stored ``resource_version`` (someone else wrote first)."""


class InvalidObject(StoreError, ValueError):
    """Raised when fields are unknown, server-managed or have bad values, or a filter or cursor is malformed."""


class RetriesExhausted(StoreError):
    """Raised when a transaction still fails with a serialization failure after its last attempt."""


class MigrationError(StoreError):
    """Raised when a schema migration cannot be applied; the failing statement's error is the cause."""


class Unavailable(StoreError):
    """Raised when the database cannot be reached, or no pooled connection frees up in time."""


class ConfigurationError(StoreError, ValueError):
    """Raised when the database URL is unusable or no database has been bound."""


def sqlstate(exc: BaseException) -> Optional[str]:
    """The SQLSTATE of a database error: on the error itself, its ``orig`` (peewee), or down its causes."""
    cause: Optional[BaseException] = exc
    for _ in range(8):  # a StoreError from a peewee error from a psycopg2 error, and a little more
        if cause is None:
            return None
        for candidate in (cause, getattr(cause, "orig", None)):
            code = getattr(candidate, "pgcode", None) or getattr(candidate, "sqlstate", None)
            if code:
                return code
        cause = cause.__cause__
    return None


def translate(exc: BaseException) -> Optional[StoreError]:
    """The :class:`StoreError` for a database error, or None when ``exc`` is not one.

    Constraint violations become :class:`Conflict` (unique, foreign key) or
    :class:`InvalidObject` (not null, check, bad data); connection trouble
    becomes :class:`Unavailable`; anything else a plain :class:`StoreError`.
    """
    if isinstance(exc, MaxConnectionsExceeded):
        return Unavailable("no database connection became free in time")
    if type(exc) is ValueError and "NUL (0x00)" in str(exc):  # psycopg2's, before anything is sent
        return InvalidObject("text must not contain NUL (\\u0000)")
    if not isinstance(exc, (peewee.PeeweeException, psycopg2.Error)):
        return None
    code = sqlstate(exc) or ""
    message = _message(exc)
    if code in ("23505", "23503"):
        return Conflict(message)
    if code.startswith(("22", "23")):
        return InvalidObject(message)
    if code.startswith(("08", "53", "57")) or (not code and isinstance(exc, _CONNECTION_ERRORS)):
        return Unavailable(f"database unavailable: {message}")
    return StoreError(f"database error {code or '(no SQLSTATE)'}: {message}")


def _message(exc: BaseException) -> str:
    """The server's own words (primary message and detail) when it sent any."""
    orig = getattr(exc, "orig", exc)
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if not primary:
        return str(orig).strip() or type(orig).__name__
    detail = getattr(diag, "message_detail", None)
    return f"{primary}: {detail}" if detail else primary
