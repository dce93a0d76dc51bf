"""Transactions that retry themselves on serialization failures.

At SERIALIZABLE isolation the database may abort any transaction that
raced another one (SQLSTATE 40001) and expects the client to run it again.
:func:`run_in_transaction` does that: it runs a function in one transaction,
and on a retryable failure rolls back, waits (capped exponential backoff
with full jitter, so racing clients spread out) and runs it again from the
start. The function must therefore do nothing but database work, or work
that is safe to repeat.

A function that runs a single statement needs no transaction of its own:
``single_statement=True`` runs it without BEGIN and COMMIT (the statement is
atomic on its own), saving two round trips, with the same retries.

A call made while a transaction is already open joins it: only the
outermost call owns the transaction, so only it can retry (a retry must
restart the whole transaction) and only it translates errors. This lets
store functions compose into one larger atomic write. It is also what
CockroachDB needs, which has no nested transactions (peewee's own
``run_transaction`` is the same loop with a savepoint, CockroachDB only).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import random
import sys
import time
from typing import Callable, Optional, TypeVar

import peewee

from .database import db
from .errors import RETRYABLE, ConfigurationError, RetriesExhausted, Unavailable, sqlstate, translate

__all__ = ["run_in_transaction", "transactional"]

T = TypeVar("T")


def run_in_transaction(
    fn: Callable[[], T],
    *,
    database: Optional[peewee.Database] = None,
    attempts: int = 10,
    base_delay: float = 0.005,
    max_delay: float = 0.5,
    single_statement: bool = False,
) -> T:
    """Return ``fn()`` run in one transaction, retried on SQLSTATE 40001 / 40P01.

    Parameters:
      database: the database to use; :data:`models.database.db` by default.
      single_statement: ``fn`` runs one statement, atomic on its own: no
        BEGIN/COMMIT around it. Should its connection turn out dead, it runs
        again on a new one (a statement that gets no answer at all was most
        likely never received; it must be safe to repeat regardless).
      attempts: runs of ``fn`` before giving up.
      base_delay: seconds of the first backoff; it doubles per attempt.
      max_delay: the cap on one backoff.

    Raises:
      RetriesExhausted: the last attempt failed too; its error is the cause.
      StoreError: a database error, translated (see :func:`models.errors.translate`).
      Anything else ``fn`` raises, unchanged, after the rollback.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    database = _bound(database if database is not None else db)
    if database.in_transaction():
        return fn()
    retrying = functools.partial(
        _retrying,
        fn,
        database=database,
        attempts=attempts,
        base_delay=base_delay,
        max_delay=max_delay,
        single_statement=single_statement,
    )
    try:
        try:
            with _connection(database):
                return retrying()
        except _DeadConnection:
            # The pooled connection died while idle (server restart, idle kill): BEGIN
            # (or the single statement) failed without an answer. Its check-in
            # discarded it; run on a new one.
            with _connection(database):
                return retrying()
    except _DeadConnection as dead:
        raise Unavailable(f"the database connection was lost: {dead.__cause__}") from dead.__cause__
    except Exception as exc:
        translated = translate(exc)
        if translated is None:
            raise
        raise translated from exc


def transactional(fn: Optional[Callable] = None, **options) -> Callable:
    """Decorator form of :func:`run_in_transaction`: ``@transactional`` or ``@transactional(attempts=3)``."""
    if fn is None:
        return functools.partial(transactional, **options)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return run_in_transaction(lambda: fn(*args, **kwargs), **options)

    return wrapper


def _retrying(
    fn: Callable[[], T],
    *,
    database: peewee.Database,
    attempts: int,
    base_delay: float,
    max_delay: float,
    single_statement: bool,
) -> T:
    for attempt in itertools.count(1):
        try:
            return _run_once(fn, database, single_statement)
        except Exception as exc:
            if sqlstate(exc) not in RETRYABLE:
                raise
            if attempt >= attempts:
                raise RetriesExhausted(f"transaction still conflicting after {attempts} attempts: {exc}") from exc
        time.sleep(_backoff(attempt, base_delay=base_delay, max_delay=max_delay))


def _run_once(fn: Callable[[], T], database: peewee.Database, single_statement: bool) -> T:
    """``fn()`` once: alone when it is a single statement, else between BEGIN and COMMIT."""
    if single_statement:
        with _first_round_trip():
            return fn()
    transaction = database.atomic()
    with _first_round_trip():
        transaction.__enter__()  # BEGIN: the first round trip on this connection
    with _entered(transaction):
        return fn()


class _DeadConnection(Exception):
    """Raised when the first statement (BEGIN, or a single statement) gets no answer: the connection is dead."""


@contextlib.contextmanager
def _first_round_trip():
    """Turn a failure without an answer from the server into _DeadConnection."""
    try:
        yield
    except (peewee.OperationalError, peewee.InterfaceError) as exc:
        if sqlstate(exc) is None:  # no answer from the server: the connection is gone
            raise _DeadConnection() from exc
        raise


@contextlib.contextmanager
def _entered(transaction):
    """Exit an already entered transaction context as ``with`` would (commit, or roll back and re-raise)."""
    try:
        yield
    except BaseException:
        if not transaction.__exit__(*sys.exc_info()):
            raise
    else:
        transaction.__exit__(None, None, None)


def _bound(database: peewee.Database) -> peewee.Database:
    if isinstance(database, peewee.Proxy) and database.obj is None:
        raise ConfigurationError("no database is bound: call models.database.bind() first")
    return database


def _connection(database: peewee.Database):
    """Check a pooled connection out for the transaction, unless this thread holds one already."""
    return database.connection_context() if database.is_closed() else contextlib.nullcontext()


def _backoff(attempt: int, *, base_delay: float, max_delay: float) -> float:
    """Full jitter after the ``attempt``-th failure: uniform in [0, min(max_delay, base_delay * 2**(attempt - 1))]."""
    return random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
