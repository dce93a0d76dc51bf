"""The statements written once per model read and write what peewee's own queries would, on a real PostgreSQL."""

from __future__ import annotations

import uuid

import peewee
import pytest
from playhouse.pool import PooledPostgresqlDatabase

from models import Conflict, WorkloadDefinition, statements, store
from models.base import utcnow
from models.database import bind
from models.events import Event, write_status_and_record
from models.gateways import DomainNameDefinition
from models.migrations import migrate
from models.outbox import Outbox


def a_workload_definition(name: str = "web") -> WorkloadDefinition:
    return WorkloadDefinition(
        name=name,
        yaml_document="kind: ConfigMap",
        status={"phase": "Waiting", "inventory": {"a": 1}},
        created_at=utcnow(),
        updated_at=utcnow(),
    )


def test_an_inserted_object_reads_back_through_peewee_with_every_field(database):
    # Given objects of two kinds and an outbox row, not saved yet
    definition = a_workload_definition()
    domain = DomainNameDefinition(name="d", domain="example.com", admin_email="a@example.com")
    row = Outbox.for_object(definition)

    # When they are inserted by the cached statements
    for obj in (definition, domain, row):
        statements.insert(obj)

    # Then peewee reads back exactly what they held (None where they held nothing), and they count as saved
    for obj in (definition, domain, row):
        read = type(obj).get_by_id(obj.id).__data__
        assert read == {name: obj.__data__.get(name) for name in read}
        assert set(obj.__data__) <= set(read)
        assert not obj.dirty_fields


def test_rows_inserted_together_are_all_inserted_or_none(database):
    # Given an outbox row already saved, and a new object
    definition = a_workload_definition()
    taken = Outbox.for_object(definition)
    taken.save(force_insert=True)

    # When the object and a row with the taken id are inserted together, outside any transaction
    clash = Outbox.for_object(definition)
    clash.id = taken.id
    with pytest.raises(peewee.IntegrityError):
        statements.insert(definition, clash)

    # Then the object was not inserted either
    assert WorkloadDefinition.select().count() == 0
    assert Outbox.select().count() == 1


def test_a_row_selected_by_id_is_the_one_peewee_selects(database):
    # Given a saved object
    definition = a_workload_definition()
    definition.save(force_insert=True)

    # When it is selected by id (and for update, inside a transaction)
    found = statements.select_by_id(WorkloadDefinition, definition.id)
    with database.atomic():
        locked = statements.select_by_id(WorkloadDefinition, definition.id, for_update=True)

    # Then both are what peewee reads, with nothing to save, and an unknown id is None
    expected = WorkloadDefinition.get_by_id(definition.id).__data__
    assert found.__data__ == expected and locked.__data__ == expected
    assert not found.is_dirty() and not locked.is_dirty()
    assert found.status == {"phase": "Waiting", "inventory": {"a": 1}}
    assert statements.select_by_id(WorkloadDefinition, uuid.uuid4()) is None


def test_an_update_by_id_sets_increments_merges_and_checks_its_conditions(database):
    # Given a saved object at generation 1
    definition = a_workload_definition()
    definition.save(force_insert=True)

    # When an update names another generation, nothing changes
    def update(generation: int) -> int:
        return statements.update_by_id(
            WorkloadDefinition,
            definition.id,
            {"reconciled": True, "observed_generation": generation},
            increment=("resource_version",),
            merge={"status": {"phase": "Reconciled", "message": ""}},
            where={"generation": generation},
        )

    assert update(2) == 0
    assert WorkloadDefinition.get_by_id(definition.id).resource_version == 1

    # When it names the current one, then values are set, the counter goes up and the JSON keys merge in
    assert update(1) == 1
    after = WorkloadDefinition.get_by_id(definition.id)
    assert (after.reconciled, after.observed_generation, after.resource_version) == (True, 1, 2)
    assert after.status == {"phase": "Reconciled", "message": "", "inventory": {"a": 1}}


def test_a_status_and_its_event_are_written_together_or_not_at_all(database):
    # Given an object at generation 1
    definition = a_workload_definition()
    definition.save(force_insert=True)

    def report(generation: int, reason: str = "Reconciled") -> bool:
        return write_status_and_record(
            WorkloadDefinition,
            definition.id,
            generation=generation,
            status={"phase": reason, "message": ""},
            reason=reason,
            message="done",
            reconciled=True,
        )

    def events() -> list[tuple[str, int]]:
        rows = Event.select().where(Event.object_id == definition.id).order_by(Event.created_at)
        return [(e.reason, e.count) for e in rows]

    # When a report names a generation the object no longer has, then neither the status nor an event is written
    assert report(2) is False
    assert WorkloadDefinition.get_by_id(definition.id).resource_version == 1
    assert events() == []

    # When reports name its generation, then each writes the status, and a repeat counts its event up
    assert report(1) is True
    assert report(1) is True
    assert report(1, reason="Failed") is True
    after = WorkloadDefinition.get_by_id(definition.id)
    assert (after.observed_generation, after.reconciled, after.resource_version) == (1, True, 4)
    assert after.status == {"phase": "Failed", "message": "", "inventory": {"a": 1}}
    assert events() == [("Reconciled", 2), ("Failed", 1)]


def test_a_create_run_again_after_its_answer_was_lost_finds_its_rows_and_succeeds(database, monkeypatch):
    # Given a database whose answer to the create's batch is lost after the batch was committed
    real_insert = statements.insert
    answers_lost = []

    def insert_then_lose_the_answer(*objs, **options):
        real_insert(*objs, **options)
        if not answers_lost:
            answers_lost.append(objs)
            raise peewee.InterfaceError("connection already closed")  # no SQLSTATE: no answer came

    monkeypatch.setattr(statements, "insert", insert_then_lose_the_answer)

    # When an object is created, then it is created once, with its one outbox row, and no Conflict
    written = store.create(DomainNameDefinition, {"name": "d", "domain": "example.com", "admin_email": "a@b.c"})
    assert answers_lost
    assert [o.id for o in DomainNameDefinition.select()] == [written.obj.id]
    assert [row.id for row in Outbox.select()] == [row.id for row in written.outbox]
    # And a second create of the name is still refused
    with pytest.raises(Conflict):
        store.create(DomainNameDefinition, {"name": "d", "domain": "example.com", "admin_email": "a@b.c"})


def test_on_postgresql_each_connection_prepares_a_statement_once_and_runs_it_by_name(database):
    # Given an object read twice on one connection
    definition = a_workload_definition()
    definition.save(force_insert=True)
    with database.connection_context():
        statements.select_by_id(WorkloadDefinition, definition.id)
        statements.select_by_id(WorkloadDefinition, definition.id)

        # Then the server holds the statement prepared once, and the connection knows it by name
        prepared = database.execute_sql("SELECT name, statement FROM pg_prepared_statements").fetchall()
        selects = [name for name, text in prepared if 'FROM "workload_definitions"' in text]
        assert len(selects) == 1 and selects[0] in database.connection().prepared

    # And a new connection prepares it again for itself
    database.close_all()
    with database.connection_context():
        assert statements.select_by_id(WorkloadDefinition, definition.id).name == "web"


def test_a_connection_that_cannot_remember_statements_runs_them_as_they_are(empty_database_url):
    # Given the models bound to a pool of plain psycopg2 connections (as CockroachDB's are)
    plain = PooledPostgresqlDatabase(empty_database_url)
    migrate(plain)
    bind(plain)
    try:
        # When an object is inserted with its outbox row, read, and its status written with its event
        definition = a_workload_definition()
        statements.insert(definition, Outbox.for_object(definition))
        found = statements.select_by_id(WorkloadDefinition, definition.id)
        written = write_status_and_record(
            WorkloadDefinition,
            definition.id,
            generation=1,
            status={"phase": "Reconciled"},
            reason="Reconciled",
            message="ok",
        )

        # Then each worked, and nothing was prepared on the server
        assert found.name == "web" and written is True
        assert plain.execute_sql("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
    finally:
        bind(None)
        plain.close_all()
