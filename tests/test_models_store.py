"""The store on a real PostgreSQL: lifecycle writes, the outbox beside them, reads and pages."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest

from models import (
    Conflict,
    InvalidObject,
    NotFound,
    Outbox,
    PreconditionFailed,
    WorkloadDefinition,
    WorkloadResourceDefinition,
    registry,
    run_in_transaction,
    store,
)
from models.aws import AwsAccount, AwsEksKubernetesRuntimeDefinition
from models.validation import checked_fields
from models.workloads import record_resources

YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"


def make(name: str = "web", yaml_document: str = YAML) -> WorkloadDefinition:
    return store.create(WorkloadDefinition, {"name": name, "yaml_document": yaml_document}).obj


def outbox_rows() -> list[Outbox]:
    return list(Outbox.select().order_by(Outbox.created_at))


def age_everything(seconds: float) -> None:
    """Move every timestamp back, as if the rows had been written ``seconds`` ago."""
    delta = dt.timedelta(seconds=seconds)
    run_in_transaction(
        lambda: (
            Outbox.update(created_at=Outbox.created_at - delta).execute(),
            WorkloadDefinition.update(updated_at=WorkloadDefinition.updated_at - delta).execute(),
        )
    )


# Create and read -------------------------------------------------------------------


def test_create_stores_generation_one_and_enqueues_its_reconciliation(database):
    # When a workload definition is created
    written = store.create(WorkloadDefinition, {"name": "web", "yaml_document": YAML})

    # Then it is stored at generation 1, version 1, not observed yet
    obj = store.get(WorkloadDefinition, written.obj.id)
    assert (obj.name, obj.yaml_document) == ("web", YAML)
    assert (obj.generation, obj.observed_generation, obj.resource_version) == (1, 0, 1)
    assert obj.status == {} and obj.deletion_scheduled is None and not obj.reconciled
    assert obj.created_at.tzinfo == dt.timezone.utc

    # And one outbox row, returned and committed, names the work for the relay
    [row] = written.outbox
    assert [r.id for r in outbox_rows()] == [row.id]
    assert (row.queue, row.actor, row.kind, row.object_id, row.generation) == (
        "workloads",
        "reconcile",
        "WorkloadDefinition",
        obj.id,
        1,
    )
    assert row.payload == {"kind": "WorkloadDefinition", "object_id": str(obj.id), "generation": 1}


def test_a_duplicate_name_is_a_conflict(database):
    # Given an object named "web"
    make("web")

    # When another is created with the same name, then it is refused, and nothing is written
    with pytest.raises(Conflict, match="named 'web' already exists"):
        make("web")
    assert WorkloadDefinition.select().count() == 1
    assert len(outbox_rows()) == 1


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"name": "web", "yaml_document": YAML, "color": "blue"}, "unknown field 'color'"),
        ({"name": "web", "yaml_document": YAML, "generation": 7}, "'generation' is managed by the server"),
        ({"name": "web", "yaml_document": YAML, "status": {}}, "'status' is managed by the server"),
        ({"name": "web", "yaml_document": YAML, "id": str(uuid.uuid4())}, "'id' is managed by the server"),
        ({"name": "web"}, "missing field 'yaml_document'"),
        ({"yaml_document": YAML}, "missing field 'name'"),
        ({"name": "web", "yaml_document": 42}, "'yaml_document' must be of type str, not int"),
        ({"name": "web", "yaml_document": None}, "'yaml_document' cannot be null"),
        ({"name": " ", "yaml_document": YAML}, "'name' cannot be empty"),
        ({"name": "x" * 254, "yaml_document": YAML}, "longer than 253"),
        ({"name": "web\nFAILED", "yaml_document": YAML}, "'name' must not hold control characters"),
        ({"name": "web\x1b[31m", "yaml_document": YAML}, "'name' must not hold control characters"),
    ],
)
def test_bad_fields_are_refused_by_name(database, fields, message):
    # When an object is created with a bad field, then the error names it, and nothing is written
    with pytest.raises(InvalidObject, match=message):
        store.create(WorkloadDefinition, fields)
    assert WorkloadDefinition.select().count() == 0 and outbox_rows() == []


def test_an_integer_a_column_cannot_hold_is_refused_by_name_and_digits_must_be_ascii():
    # Given an integer column (PostgreSQL's integer: 32 bits), then a value past it is named with the range
    fields = {"name": "eks", "aws_account_id": str(uuid.uuid4()), "default_node_group_maximum_size": 2**31}
    with pytest.raises(InvalidObject, match=r"'default_node_group_maximum_size' must be between -2147483648 and"):
        checked_fields(AwsEksKubernetesRuntimeDefinition, fields, creating=True)
    assert checked_fields(
        AwsEksKubernetesRuntimeDefinition, {**fields, "default_node_group_maximum_size": 2**31 - 1}, creating=True
    )
    # And an account id of full-width digits is not an account id
    with pytest.raises(InvalidObject, match="12 digits"):
        AwsAccount.check({"account_id": "\uff11" * 12, "role_arn": "arn:aws:iam::1:role/x"})


def test_an_unknown_or_malformed_id_is_not_found(database):
    with pytest.raises(NotFound):
        store.get(WorkloadDefinition, uuid.uuid4())
    with pytest.raises(NotFound):
        store.get(WorkloadDefinition, "not-a-uuid")


def test_list_pages_through_every_object_once_in_creation_order(database):
    # Given seven objects
    names = [f"w{i}" for i in range(7)]
    for name in names:
        make(name)

    # When they are listed three at a time
    seen, cursor, pages = [], None, 0
    while True:
        items, cursor = store.list_objects(WorkloadDefinition, limit=3, after=cursor)
        seen += [item.name for item in items]
        pages += 1
        if cursor is None:
            break

    # Then every object comes once, oldest first, in three pages
    assert seen == names and pages == 3


def test_list_filters_on_fields_with_values_from_a_query_string(database):
    # Given two objects, one of them reconciled
    web, _ = make("web"), make("db")
    store.write_status(WorkloadDefinition, web.id, generation=1, status={"phase": "Ready"}, reconciled=True)

    # When listing with equality filters given as text, then only the matches come back
    def names(**filters):
        return [obj.name for obj in store.list_objects(WorkloadDefinition, filters=filters)[0]]

    assert names(name="web") == ["web"]
    assert names(reconciled="true") == ["web"]
    assert names(reconciled=False) == ["db"]
    assert names(generation="1", name="db") == ["db"]
    assert names(id=str(web.id)) == ["web"]
    assert names(name="nope") == []


@pytest.mark.parametrize(
    "options, message",
    [
        ({"filters": {"color": "blue"}}, "cannot filter on 'color'"),
        ({"filters": {"status": "{}"}}, "cannot filter on 'status'"),
        ({"filters": {"generation": "two"}}, "invalid value for filter 'generation'"),
        ({"filters": {"reconciled": "maybe"}}, "invalid value for filter 'reconciled'"),
        ({"after": "garbage!"}, "invalid cursor"),
        ({"limit": 0}, "limit must be between"),
        ({"limit": 5000}, "limit must be between"),
    ],
)
def test_list_refuses_bad_filters_cursors_and_limits(database, options, message):
    with pytest.raises(InvalidObject, match=message):
        store.list_objects(WorkloadDefinition, **options)


# Update ----------------------------------------------------------------------------


def test_a_spec_change_bumps_generation_and_enqueues_it(database):
    # Given an object whose generation 1 reconciled
    obj = make()
    store.write_status(WorkloadDefinition, obj.id, generation=1, status={"phase": "Reconciled"}, reconciled=True)

    # When its spec changes
    written = store.update(WorkloadDefinition, obj.id, {"yaml_document": YAML + "---\n"}, if_match=2)

    # Then generation and resource_version are bumped, it is no longer reconciled (generation 2 is not),
    # and an outbox row asks for generation 2
    stored = store.get(WorkloadDefinition, obj.id)
    assert (stored.generation, stored.resource_version, stored.reconciled) == (2, 3, False)
    assert stored.updated_at > stored.created_at
    assert [row.generation for row in written.outbox] == [2]
    assert [row.generation for row in outbox_rows()] == [1, 2]


def test_a_change_outside_the_spec_bumps_only_the_resource_version(database):
    # Given an object
    obj = make("web")

    # When it is renamed, or "changed" to the same spec
    store.update(WorkloadDefinition, obj.id, {"name": "www"})
    written = store.update(WorkloadDefinition, obj.id, {"yaml_document": YAML})

    # Then the rename moved the version on but not the generation, the same spec wrote nothing,
    # and no work was enqueued
    stored = store.get(WorkloadDefinition, obj.id)
    assert (stored.name, stored.generation, stored.resource_version) == ("www", 1, 2)
    assert written.outbox == [] and written.obj.resource_version == 2 and len(outbox_rows()) == 1


def test_update_refuses_a_stale_if_match_a_taken_name_and_bad_fields(database):
    # Given two objects
    web, _ = make("web"), make("db")

    # Then an outdated If-Match, a name already taken, or a server field is refused
    with pytest.raises(PreconditionFailed, match="resource_version 1, not 5"):
        store.update(WorkloadDefinition, web.id, {"yaml_document": "x"}, if_match=5)
    with pytest.raises(Conflict, match="named 'db' already exists"):
        store.update(WorkloadDefinition, web.id, {"name": "db"})
    with pytest.raises(InvalidObject, match="'observed_generation' is managed"):
        store.update(WorkloadDefinition, web.id, {"observed_generation": 3})
    with pytest.raises(NotFound):
        store.update(WorkloadDefinition, uuid.uuid4(), {"yaml_document": "x"})

    # And nothing changed
    assert store.get(WorkloadDefinition, web.id).resource_version == 1


def test_the_row_and_its_outbox_row_commit_or_roll_back_together(database):
    # Given an object
    obj = make()

    # When a transaction updates it and then fails
    def update_then_fail():
        store.update(WorkloadDefinition, obj.id, {"yaml_document": "changed"})
        assert WorkloadDefinition.get_by_id(obj.id).yaml_document == "changed"
        assert len(outbox_rows()) == 2
        raise RuntimeError("crash after the write")

    with pytest.raises(RuntimeError, match="crash after the write"):
        run_in_transaction(update_then_fail)

    # Then neither the change nor its outbox row exists
    stored = store.get(WorkloadDefinition, obj.id)
    assert (stored.yaml_document, stored.generation, stored.resource_version) == (YAML, 1, 1)
    assert [row.generation for row in outbox_rows()] == [1]


def test_concurrent_updates_with_the_same_if_match_exactly_one_wins(database):
    # Given an object at resource_version 1, and eight writers that all read version 1
    obj = make()
    writers = 8
    start = threading.Barrier(writers)
    outcomes: list[object] = []

    def write(i: int) -> None:
        start.wait(timeout=10)
        try:
            store.update(WorkloadDefinition, obj.id, {"yaml_document": f"writer {i}"}, if_match=1)
            outcomes.append("won")
        except PreconditionFailed:
            outcomes.append("lost")

    # When they all update at once with If-Match: 1
    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Then exactly one wins, the others are told they lost, and one new generation is enqueued
    assert sorted(outcomes) == ["lost"] * (writers - 1) + ["won"]
    stored = store.get(WorkloadDefinition, obj.id)
    assert (stored.generation, stored.resource_version) == (2, 2)
    assert [row.generation for row in outbox_rows()] == [1, 2]


# Deletion --------------------------------------------------------------------------


def test_deletion_is_scheduled_then_confirmed(database):
    # Given an object
    obj = make()

    # When its deletion is scheduled (twice: a retried DELETE)
    first = store.schedule_deletion(WorkloadDefinition, obj.id, if_match=1)
    again = store.schedule_deletion(WorkloadDefinition, obj.id)

    # Then it is marked, at a new generation, with one outbox row for the teardown
    stored = store.get(WorkloadDefinition, obj.id)
    assert stored.deletion_scheduled is not None
    assert (stored.generation, stored.resource_version) == (2, 2)
    assert [row.generation for row in first.outbox] == [2] and again.outbox == []
    assert len(outbox_rows()) == 2

    # And it can no longer be changed
    with pytest.raises(Conflict, match="being deleted"):
        store.update(WorkloadDefinition, obj.id, {"yaml_document": "x"})

    # When the reconciler confirms the deletion, then the object is gone (a repeat is harmless)
    assert store.confirm_deletion(WorkloadDefinition, obj.id) is True
    assert store.confirm_deletion(WorkloadDefinition, obj.id) is False
    with pytest.raises(NotFound):
        store.get(WorkloadDefinition, obj.id)


def test_deletion_cannot_be_confirmed_before_it_is_scheduled(database):
    obj = make()
    with pytest.raises(Conflict, match="not scheduled"):
        store.confirm_deletion(WorkloadDefinition, obj.id)
    with pytest.raises(PreconditionFailed):
        store.schedule_deletion(WorkloadDefinition, obj.id, if_match=9)
    assert store.get(WorkloadDefinition, obj.id).deletion_scheduled is None


# Status ----------------------------------------------------------------------------


def test_status_is_written_for_the_generation_the_reconciler_read(database):
    # Given an object at generation 1
    obj = make()

    # When the reconciler reports on generation 1
    written = store.write_status(
        WorkloadDefinition, obj.id, generation=1, status={"phase": "Ready"}, reconciled=True, creation_confirmed=True
    )

    # Then the status and flags are stored, generation 1 is observed, and no work is enqueued
    stored = store.get(WorkloadDefinition, obj.id)
    assert written is True
    assert stored.status == {"phase": "Ready"} and stored.reconciled and stored.creation_confirmed
    assert (stored.observed_generation, stored.resource_version) == (1, 2)
    assert len(outbox_rows()) == 1


def test_a_status_for_a_stale_generation_is_refused(database):
    # Given an object whose spec changed while a reconcile of generation 1 ran
    obj = make()
    store.update(WorkloadDefinition, obj.id, {"yaml_document": "v2"})

    # When that reconcile reports, then nothing is written
    assert store.write_status(WorkloadDefinition, obj.id, generation=1, status={"phase": "Ready"}) is False
    stored = store.get(WorkloadDefinition, obj.id)
    assert (stored.status, stored.observed_generation, stored.resource_version) == ({}, 0, 2)

    # And a report on a deleted object is refused the same way
    assert store.write_status(WorkloadDefinition, uuid.uuid4(), generation=1, status={}) is False


def test_a_temporary_failure_is_shown_without_observing_the_generation(database):
    obj = make()
    assert store.write_status(
        WorkloadDefinition, obj.id, generation=1, status={"phase": "Retrying", "message": "timeout"}, observed=False
    )
    stored = store.get(WorkloadDefinition, obj.id)
    assert stored.status["message"] == "timeout" and stored.observed_generation == 0
    with pytest.raises(InvalidObject, match="status must be an object"):
        store.write_status(WorkloadDefinition, obj.id, generation=1, status=["not", "an", "object"])
    with pytest.raises(TypeError, match="unknown flags"):
        store.write_status(WorkloadDefinition, obj.id, generation=1, status={}, deletion_confirmed=True)


# The relay's and the resync's reads ------------------------------------------------------


def test_pending_outbox_returns_old_rows_until_they_are_deleted(database):
    # Given two outbox rows written a minute ago, and one just now
    make("a"), make("b")
    age_everything(60)
    make("c")

    # When the relay asks for rows older than five seconds, then it gets the two old ones, oldest first
    pending = store.pending_outbox(older_than_seconds=5, limit=10)
    assert [row.payload["object_id"] for row in pending] == [
        str(WorkloadDefinition.get(name=name).id) for name in ("a", "b")
    ]
    assert len(store.pending_outbox(older_than_seconds=5, limit=1)) == 1

    # When it deletes them after their PubAcks, then they are gone and only the new row is left
    assert store.delete_outbox([row.id for row in pending]) == 2
    assert store.delete_outbox([]) == 0
    assert store.pending_outbox(older_than_seconds=5, limit=10) == []
    assert len(store.pending_outbox(older_than_seconds=0, limit=10)) == 1


def test_unreconciled_finds_unobserved_generations_and_pending_deletions(database):
    # Given a reconciled object, an unreconciled one, and a reconciled one being deleted, all a minute old
    done, _, leaving = make("done"), make("waiting"), make("leaving")
    for obj in (done, leaving):
        store.write_status(WorkloadDefinition, obj.id, generation=1, status={}, reconciled=True)
    store.schedule_deletion(WorkloadDefinition, leaving.id)
    store.write_status(WorkloadDefinition, leaving.id, generation=2, status={}, deletion_acknowledged=True)
    age_everything(60)

    # When the resync sweep looks for objects left unreconciled for 30 s
    found = store.unreconciled(WorkloadDefinition, older_than_seconds=30, limit=10)

    # Then it finds the unobserved one and the pending deletion, but nothing touched recently
    assert sorted(obj.name for obj in found) == ["leaving", "waiting"]
    assert store.unreconciled(WorkloadDefinition, older_than_seconds=120, limit=10) == []


# Workload resources and the registry -------------------------------------------------


def test_recording_resources_is_idempotent_and_follows_the_yaml(database):
    # Given a workload definition
    obj = make()
    documents = [("ConfigMap/web", {"kind": "ConfigMap"}), ("Deployment/web", {"kind": "Deployment"})]

    # When its documents are recorded twice, then there is one row per document
    record_resources(obj.id, documents)
    record_resources(obj.id, documents)
    rows = resource_rows(obj.id)
    assert [(row.name, row.position) for row in rows] == [("ConfigMap/web", 0), ("Deployment/web", 1)]
    assert WorkloadResourceDefinition.select().count() == 2

    # When the YAML changes, then rows are updated, added and removed to match it
    record_resources(obj.id, [("Deployment/web", {"kind": "Deployment", "v": 2}), ("Service/web", {})])
    rows = resource_rows(obj.id)
    assert [(row.name, row.json_definition) for row in rows] == [
        ("Deployment/web", {"kind": "Deployment", "v": 2}),
        ("Service/web", {}),
    ]

    # And they go with their definition
    store.schedule_deletion(WorkloadDefinition, obj.id)
    store.confirm_deletion(WorkloadDefinition, obj.id)
    assert WorkloadResourceDefinition.select().count() == 0
    with pytest.raises(NotFound):
        record_resources(obj.id, documents)
    with pytest.raises(InvalidObject, match="unique"):
        record_resources(make("other").id, [("a", {}), ("a", {})])


def resource_rows(definition_id) -> list[WorkloadResourceDefinition]:
    table = WorkloadResourceDefinition
    return list(table.select().where(table.workload_definition == definition_id).order_by(table.position))


def test_the_registry_finds_kinds_by_name_and_plural():
    assert registry.by_kind("WorkloadDefinition") is WorkloadDefinition
    assert registry.by_plural("workload-definitions") is WorkloadDefinition
    assert WorkloadDefinition in registry.kinds()
    with pytest.raises(NotFound):
        registry.by_plural("nothing-here")
    with pytest.raises(ValueError, match="already registered"):

        @registry.register
        class Impostor(WorkloadDefinition):
            kind = "WorkloadDefinition"
            plural = "impostors"


def test_status_keys_merge_and_an_inventory_survives_generations(database):
    # Given an object whose reconciler recorded an inventory mid-build, then a waiting status
    obj = make("web")
    assert store.merge_status(WorkloadDefinition, obj.id, {"inventory": {"vpc": "vpc-1"}})
    store.write_status(
        WorkloadDefinition, obj.id, generation=1, status={"phase": "Waiting", "message": "m"}, observed=False
    )

    # When the spec changes and the new generation is reconciled
    store.update(WorkloadDefinition, obj.id, {"yaml_document": YAML + "---\n"})
    store.write_status(WorkloadDefinition, obj.id, generation=2, status={"phase": "Reconciled", "message": ""})

    # Then phase and message are replaced and the inventory is still there
    assert store.get(WorkloadDefinition, obj.id).status == {
        "phase": "Reconciled",
        "message": "",
        "inventory": {"vpc": "vpc-1"},
    }
    assert not store.merge_status(WorkloadDefinition, uuid.uuid4(), {"x": 1})


def test_a_reconciler_owned_field_is_written_without_a_new_generation(database):
    from models import AwsRelationalDatabaseInstance

    # Given a reconciler-owned secret field, a client cannot set it and the store refuses the others
    with pytest.raises(InvalidObject, match="managed by the server"):
        store.create(AwsRelationalDatabaseInstance, {"name": "db", "master_password": "x"})
    with pytest.raises(TypeError, match="cannot set"):
        store.write_fields(WorkloadDefinition, make("web").id, {"yaml_document": "x"})
    with pytest.raises(TypeError, match="cannot set"):
        store.write_fields(WorkloadDefinition, make("web2").id, {"generation": 9})


def test_recording_the_same_documents_again_changes_nothing(database):
    obj = make("web")
    documents = [("ConfigMap/web", {"kind": "ConfigMap"})]
    assert record_resources(obj.id, documents) is True
    assert record_resources(obj.id, documents) is False
    assert record_resources(obj.id, [("ConfigMap/web", {"kind": "ConfigMap", "v": 2})]) is True
    assert record_resources(obj.id, []) is True and resource_rows(obj.id) == []


def test_a_reconcile_can_be_requested_without_a_spec_change(database):
    # Given two objects, one of them being deleted
    web, going = make("web"), make("going")
    store.schedule_deletion(WorkloadDefinition, going.id)
    before = len(outbox_rows())

    # When both are asked to reconcile again
    rows = store.request_reconcile(WorkloadDefinition, [web.id, going.id])

    # Then only the live one has a new generation and an outbox row for it
    assert [(row.object_id, row.generation) for row in rows] == [(web.id, 2)]
    assert store.get(WorkloadDefinition, web.id).generation == 2
    assert store.get(WorkloadDefinition, going.id).generation == 2  # from its deletion, not bumped again
    assert len(outbox_rows()) == before + 1
    assert store.request_reconcile(WorkloadDefinition, []) == []
