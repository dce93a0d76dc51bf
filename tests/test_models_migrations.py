"""Schema migrations on a real PostgreSQL: recorded, idempotent, atomic, and safe from many processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import peewee
import pytest
from typer.testing import CliRunner

from cli.main import app
from models import (
    MigrationError,
    Outbox,
    WorkloadDefinition,
    WorkloadResourceDefinition,
    database_from_url,
    migrate,
    registry,
)
from models.migrations import MIGRATIONS, Migration, applied_migrations

ROOT = Path(__file__).resolve().parent.parent

# Waits until an agreed moment, so that every process migrates at once.
MIGRATE_AT = """
import sys, time
from models import database_from_url, migrate
url, start_at = sys.argv[1], float(sys.argv[2])
database = database_from_url(url)
time.sleep(max(0.0, start_at - time.time()))
print(",".join(migrate(database)))
"""


@pytest.fixture
def fresh(empty_database_url):
    database = database_from_url(empty_database_url)
    yield database
    database.close_all()


def columns(database: peewee.Database, table: str) -> set[str]:
    return set(nullable_columns(database, table))


def nullable_columns(database: peewee.Database, table: str) -> dict[str, bool]:
    with database.connection_context():
        return {column.name: column.null for column in database.get_columns(table)}


def test_migrate_applies_everything_once_and_then_nothing(fresh):
    # When a fresh database is migrated twice
    first = migrate(fresh)
    second = migrate(fresh)

    # Then the first run applied every migration, in order, and the second none
    assert first == [migration.id for migration in MIGRATIONS]
    assert second == []
    assert applied_migrations(fresh) == first


def test_the_schema_has_a_column_for_every_model_field(fresh):
    # Given a migrated database
    migrate(fresh)

    # Then every model's fields are columns of its table: every kind's, and the outbox's
    for model in (*registry.kinds(), Outbox):
        expected = {field.column_name for field in model._meta.sorted_fields}
        assert expected == columns(fresh, model._meta.table_name), model.__name__
        nullable = {field.column_name: field.null for field in model._meta.sorted_fields}
        assert nullable == nullable_columns(fresh, model._meta.table_name), model.__name__
    assert {WorkloadDefinition, WorkloadResourceDefinition} <= set(registry.kinds())


def test_four_processes_migrating_at_once_apply_each_migration_once(empty_database_url):
    # Given four processes that will all start migrating one fresh database at the same moment
    start_at = time.time() + 2.0
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_AT, empty_database_url, str(start_at)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]

    # When they have all finished
    results = [process.communicate(timeout=60) for process in processes]

    # Then every one succeeded, and exactly one of them applied each migration
    assert [process.returncode for process in processes] == [0] * 4, [err for _, err in results]
    applied = sorted(ids for out, _ in results for ids in out.strip().split(",") if ids)
    assert applied == sorted(migration.id for migration in MIGRATIONS)  # each by one process, whichever got there
    database = database_from_url(empty_database_url)
    try:
        assert applied_migrations(database) == [migration.id for migration in MIGRATIONS]
    finally:
        database.close_all()


def test_a_failing_migration_leaves_no_trace_and_names_itself(fresh):
    # Given a migration whose second statement fails
    broken = Migration("9999_broken", ("CREATE TABLE half_done (id INT)", "CREATE TABLE half_done (id INT)"))

    # When it is applied after the real ones, then the error names it
    with pytest.raises(MigrationError, match="9999_broken") as caught:
        migrate(fresh, migrations=(*MIGRATIONS, broken))
    assert "already exists" in str(caught.value.__cause__)

    # And the migrations before it are recorded, while it left neither a table nor a record
    assert applied_migrations(fresh) == [migration.id for migration in MIGRATIONS]
    with fresh.connection_context():
        assert not fresh.table_exists("half_done")


def test_a_migration_step_may_be_a_function(fresh):
    # Given a data migration written as a function
    seeded = Migration("9000_seed", (lambda database: database.execute_sql("CREATE TABLE seeded (id INT)"),))

    # When it is applied, then it ran and is recorded
    assert migrate(fresh, migrations=(*MIGRATIONS, seeded))[-1] == "9000_seed"
    assert "id" in columns(fresh, "seeded")
    assert applied_migrations(fresh)[-1] == "9000_seed"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://admin:s3cret-pw@127.0.0.1:1/threeport", "Connection refused"),
        ("postgresql://admin:s3cret-pw@[::1/threeport", "invalid dsn"),
        ("postgresql://admin:s3cret-pw@127.0.0.1:1/threeport?sslmode=bogus", 'invalid sslmode value: "bogus"'),
    ],
    ids=["unreachable", "malformed", "bad-option"],
)
def test_threeport_migrate_says_why_it_cannot_connect_without_the_password(url, reason):
    # When I migrate a database that cannot be reached or a URL the driver refuses
    result = CliRunner().invoke(app, ["migrate", "--database-url", url], env={"COLUMNS": "400"})

    # Then one error line names the database and the driver's reason, and the password appears nowhere
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to postgresql://admin:***@"), lines
    assert reason in lines[0]
    assert "s3cret-pw" not in result.output
