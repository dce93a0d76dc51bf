"""The database every model uses, chosen by URL and bound at start-up.

Models are declared against :data:`db`, a proxy, so that the process picks
the real database once, at its edge (``DATABASE_URL``), and tests bind a
fresh one per test. Both backends run every transaction at SERIALIZABLE:
PostgreSQL because we ask for it on each ``BEGIN``, CockroachDB because it
knows no other level. Conflicts then surface as SQLSTATE 40001, which
:mod:`models.transactions` retries.

Connections are pooled per process. The default of 32 covers a process's
threads with headroom: Dramatiq's default 8 worker threads plus the relay
and resync threads, or a gunicorn worker with up to ~30 threads. Each
transaction checks a connection out and back in, so threads that come and
go never strand one. Mind the server's limit (PostgreSQL's default
``max_connections`` is 100) when multiplying by processes.

On PostgreSQL the statements of :mod:`models.statements` run as
server-side prepared statements: each connection remembers which it has
prepared (:class:`PreparingConnection`). A connection pooler in transaction
mode (PgBouncer's) would hand a session another server connection between
statements, so put none between the workers and PostgreSQL.

Checking a connection out must be cheap: peewee's pool pings the server
(``SELECT 1``) on every check-out while holding the pool-wide lock, which
serialised every transaction of a process behind one round trip (a
reconcile makes four). The pools here check only what the driver knows
locally; a connection the server dropped fails its next statement and is
discarded on check-in.
"""

from __future__ import annotations

import urllib.parse

import peewee
import psycopg2.extensions
from playhouse.cockroachdb import PooledCockroachDatabase
from playhouse.pool import PooledPostgresqlDatabase
from psycopg2.extensions import ISOLATION_LEVEL_SERIALIZABLE

from .errors import ConfigurationError

__all__ = ["db", "bind", "database_from_url", "redact_url", "redact_message", "PreparingConnection"]


class PreparingConnection(psycopg2.extensions.connection):
    """A psycopg2 connection that remembers the names of the statements it has prepared on its server."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: set[str] = set()


class _CheckedLocally:
    """Pool mix-in: a pooled connection is usable unless the driver already knows it is not."""

    def _is_closed(self, conn) -> bool:
        return bool(conn.closed) or self._adapter.txn_status(conn) == self._adapter.txn_unknown


class PostgresPool(_CheckedLocally, PooledPostgresqlDatabase):
    """PostgreSQL, pooled, checked out without a round trip."""


class CockroachPool(_CheckedLocally, PooledCockroachDatabase):
    """CockroachDB, pooled, checked out without a round trip."""


#: The database of every model; :func:`bind` points it at a real one.
db = peewee.DatabaseProxy()

_POSTGRES_SCHEMES = ("postgresql", "postgres")
_COCKROACH_SCHEMES = ("cockroachdb", "crdb")


def database_from_url(
    url: str,
    *,
    max_connections: int = 32,
    stale_timeout: float = 300,
    wait_timeout: float = 10,
) -> peewee.Database:
    """A pooled database for ``postgresql://…`` (or ``postgres://``) or ``cockroachdb://…``.

    Parameters:
      url: a libpq URL; only the scheme picks the backend, the rest (host,
        port, database, ``?sslmode=…``) goes to the driver as it is.
      max_connections: connections this process may hold open at once.
      stale_timeout: seconds after which an idle connection is replaced.
      wait_timeout: seconds a thread waits for a free connection when all
        are in use, before :class:`~models.errors.Unavailable` (0: no limit).

    Raises:
      ConfigurationError: the scheme is neither PostgreSQL nor CockroachDB.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in _POSTGRES_SCHEMES + _COCKROACH_SCHEMES:
        raise ConfigurationError(f"unsupported database URL {redact_url(url)!r}: use postgresql://… or cockroachdb://…")
    pool = {"max_connections": max_connections, "stale_timeout": stale_timeout, "timeout": wait_timeout}
    dsn = "postgresql://" + rest
    if scheme in _COCKROACH_SCHEMES:
        return CockroachPool(dsn, **pool)
    return PostgresPool(
        dsn, isolation_level=ISOLATION_LEVEL_SERIALIZABLE, connection_factory=PreparingConnection, **pool
    )


def bind(database: peewee.Database | None) -> None:
    """Point :data:`db` (so every model) at ``database``; None unbinds."""
    db.initialize(database)


def redact_url(url: str) -> str:
    """``url`` without a password, fit for an error message."""
    scheme, separator, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{separator}{credentials.split(':', 1)[0]}:***@{location}"


def redact_message(message: str, url: str) -> str:
    """A driver's message about ``url`` with the URL's password hidden (libpq quotes a bad URL whole)."""
    credentials, at, _ = url.partition("://")[2].rpartition("@")
    password = credentials.partition(":")[2] if at else ""
    for secret in {password, urllib.parse.unquote(password)} - {""}:
        message = message.replace(secret, "***")
    return message
