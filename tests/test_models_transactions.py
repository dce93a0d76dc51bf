"""Retried SERIALIZABLE transactions and database URLs, on a real PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from playhouse.cockroachdb import PooledCockroachDatabase
from playhouse.pool import PooledPostgresqlDatabase

from cli.local_servers import free_port
from models import (
    ConfigurationError,
    RetriesExhausted,
    StoreError,
    Unavailable,
    WorkloadDefinition,
    database_from_url,
    db,
    run_in_transaction,
    store,
    transactional,
)
from models.errors import InvalidObject, sqlstate

FORCE_SERIALIZATION_FAILURE = "DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$"


def count_definitions() -> int:
    return WorkloadDefinition.select().count()


def a_pooled_connection_killed_by_the_server(database, postgres_server) -> int:
    """Put a connection back in the pool, then have the server kill it: its backend's pid."""
    database.connect()
    pid = database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    database.close()
    postgres_server.execute(f"SELECT pg_terminate_backend({pid})")
    return pid


def test_transactions_run_at_serializable_isolation(database):
    level = run_in_transaction(lambda: db.execute_sql("SHOW transaction_isolation").fetchone()[0])
    assert level == "serializable"


def test_a_serialization_failure_is_retried_transparently(database):
    # Given a transaction that the server aborts with SQLSTATE 40001 on its first three runs
    runs = []

    def create_once_the_server_lets_us():
        runs.append(1)
        store.create(WorkloadDefinition, {"name": f"web-{len(runs)}", "yaml_document": "{}"})
        if len(runs) <= 3:
            db.execute_sql(FORCE_SERIALIZATION_FAILURE)
        return len(runs)

    # When it runs, then the caller sees only the successful fourth run, committed once
    assert run_in_transaction(create_once_the_server_lets_us, base_delay=0.001) == 4
    assert [obj.name for obj in WorkloadDefinition.select()] == ["web-4"]


def test_retries_give_up_after_the_last_attempt(database):
    # Given a transaction the server always aborts with 40001
    runs = []

    @transactional(attempts=3, base_delay=0.001)
    def always_conflicting():
        runs.append(1)
        store.create(WorkloadDefinition, {"name": "web", "yaml_document": "{}"})
        db.execute_sql(FORCE_SERIALIZATION_FAILURE)

    # When it runs, then it gives up after three attempts, with the server's error as the cause
    with pytest.raises(RetriesExhausted, match="after 3 attempts") as caught:
        always_conflicting()
    assert len(runs) == 3
    assert sqlstate(caught.value.__cause__) == "40001"
    assert count_definitions() == 0


def test_a_genuine_write_skew_between_two_threads_is_caught_and_retried(database):
    # Given two doctors on call, and a rule that one must stay: each leaves only if the other is on call
    run_in_transaction(
        lambda: (
            db.execute_sql("CREATE TABLE on_call (doctor TEXT PRIMARY KEY, on_duty BOOLEAN NOT NULL)"),
            db.execute_sql("INSERT INTO on_call VALUES ('alice', TRUE), ('bob', TRUE)"),
        )
    )
    both_have_read = threading.Barrier(2)
    runs = {"alice": 0, "bob": 0}

    def leave_if_covered(doctor: str) -> None:
        runs[doctor] += 1
        on_duty = db.execute_sql("SELECT count(*) FROM on_call WHERE on_duty").fetchone()[0]
        if runs[doctor] == 1:
            both_have_read.wait(timeout=10)  # both saw two on duty before either writes
        if on_duty > 1:
            db.execute_sql("UPDATE on_call SET on_duty = FALSE WHERE doctor = %s", (doctor,))

    # When both try to leave at the same time
    threads = [
        threading.Thread(target=run_in_transaction, args=(lambda d=d: leave_if_covered(d),)) for d in ("alice", "bob")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Then SERIALIZABLE aborted one of them, whose retry saw the other gone and stayed: one is on duty
    assert run_in_transaction(lambda: db.execute_sql("SELECT count(*) FROM on_call WHERE on_duty").fetchone()[0]) == 1
    assert sorted(runs.values()) == [1, 2]


def test_a_nested_call_joins_the_outer_transaction(database):
    # When two store writes run inside one transaction that then fails
    def two_creates_then_failure():
        store.create(WorkloadDefinition, {"name": "a", "yaml_document": "{}"})
        store.create(WorkloadDefinition, {"name": "b", "yaml_document": "{}"})
        raise KeyError("boom")

    # Then the failure comes out unchanged, and neither write happened
    with pytest.raises(KeyError, match="boom"):
        run_in_transaction(two_creates_then_failure)
    assert count_definitions() == 0


def test_database_errors_are_translated_and_others_pass_through(database):
    # A database error becomes a StoreError, with the driver's error as its cause
    with pytest.raises(StoreError, match="42P01") as caught:
        run_in_transaction(lambda: db.execute_sql("SELECT * FROM no_such_table"))
    assert sqlstate(caught.value.__cause__) == "42P01"
    assert sqlstate(caught.value) == "42P01"  # found down the chain of causes too

    # And text the driver refuses to send (NUL) is an invalid object, not an unexpected error
    with pytest.raises(InvalidObject, match="NUL"):
        run_in_transaction(lambda: db.execute_sql("SELECT %s", ("a\x00b",)))

    # And an unbound database is a clear error, not an AttributeError
    db.initialize(None)
    try:
        with pytest.raises(ConfigurationError, match="no database is bound"):
            store.get(WorkloadDefinition, "00000000-0000-0000-0000-000000000000")
    finally:
        db.initialize(database)


def test_an_unreachable_database_is_unavailable(postgres_server):
    # Given a URL where no server listens, and one naming a database the server does not have
    nobody_listens = database_from_url(f"postgresql://postgres@127.0.0.1:{free_port()}/threeport")
    no_such_database = database_from_url(postgres_server.url("no_such_database"))

    # Then a transaction on either fails as Unavailable
    for database in (nobody_listens, no_such_database):
        with pytest.raises(Unavailable, match="database unavailable"):
            run_in_transaction(lambda: None, database=database)


def test_a_thread_waiting_too_long_for_a_pooled_connection_is_told_so(empty_database_url):
    # Given a pool of one connection, held by a thread in the middle of a transaction
    database = database_from_url(empty_database_url, max_connections=1, wait_timeout=0.2)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(timeout=10)

    holder = threading.Thread(target=run_in_transaction, args=(hold,), kwargs={"database": database})
    holder.start()
    try:
        assert holding.wait(timeout=10)

        # When another thread needs a connection, then it gives up after the wait timeout
        with pytest.raises(Unavailable, match="no database connection became free"):
            run_in_transaction(lambda: None, database=database)
    finally:
        release.set()
        holder.join(timeout=10)
        database.close_all()


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://u:p@db.example:5432/threeport?sslmode=require", PooledPostgresqlDatabase),
        ("postgres://u@db.example/threeport", PooledPostgresqlDatabase),
        ("cockroachdb://root@crdb.example:26257/threeport?sslmode=verify-full", PooledCockroachDatabase),
    ],
)
def test_the_url_scheme_picks_the_database(url, expected):
    database = database_from_url(url, max_connections=5)
    assert isinstance(database, expected)
    assert database.database == "postgresql://" + url.split("://", 1)[1]
    assert database._max_connections == 5


def test_an_unsupported_url_is_refused_without_showing_its_password():
    with pytest.raises(ConfigurationError, match="unsupported database URL") as caught:
        database_from_url("mysql://admin:s3cret@db.example/threeport")
    assert "s3cret" not in str(caught.value)


def test_a_pooled_connection_killed_while_idle_is_replaced_transparently(database, postgres_server):
    # Given a connection that went back to the pool, then was killed by the server
    pid = a_pooled_connection_killed_by_the_server(database, postgres_server)

    # When the next transaction checks it out (without a ping: the check is local)
    def backend_pid():
        return database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]

    backend = run_in_transaction(backend_pid, database=database)

    # Then its BEGIN fails, the dead connection is discarded and the transaction runs on a new one
    assert backend != pid


def test_a_read_runs_alone_and_is_replaced_on_a_dead_connection_like_a_transaction(database, postgres_server):
    # Given a pooled connection the server killed while it was idle
    pid = a_pooled_connection_killed_by_the_server(database, postgres_server)

    # When a read-only function runs: one statement, no transaction of its own
    def backend_and_state():
        return database.execute_sql("SELECT pg_backend_pid(), now() = statement_timestamp()").fetchone()

    backend, alone = run_in_transaction(backend_and_state, database=database, single_statement=True)

    # Then it ran on a new connection, outside any BEGIN (a transaction's now() is its start, not the statement's)
    assert backend != pid
    assert alone is True
    inside = run_in_transaction(
        lambda: (database.execute_sql("SELECT pg_sleep(0.01)"), backend_and_state())[1], database=database
    )
    assert inside[1] is False


def test_a_read_aborted_with_40001_is_retried(database):
    # Given a read the server aborts with SQLSTATE 40001 twice
    runs = []

    def read():
        runs.append(1)
        if len(runs) <= 2:
            db.execute_sql(FORCE_SERIALIZATION_FAILURE)
        return count_definitions()

    # When it runs read-only, then the third run answers
    assert run_in_transaction(read, single_statement=True, base_delay=0.001) == 0
    assert len(runs) == 3
