"""The reconcile actor end to end: real PostgreSQL, real NATS, a real Dramatiq worker."""

from __future__ import annotations

import time

import pytest
from dramatiq import Worker

from models import (
    DomainNameDefinition,
    Event,
    KubernetesRuntimeDefinition,
    KubernetesRuntimeInstance,
    Outbox,
    WorkloadDefinition,
    WorkloadInstance,
    WorkloadResourceDefinition,
    store,
)
from tasks import reconcilers
from tasks.actor import declare_actors
from tasks.errors import DependencyNotReady, PermanentError
from tasks.workloads import parse_documents
from workers.locks import LeaseKeeper
from workers.outbox_relay import message_for, publish_rows

from .reconciling import observed as observed_of
from .reconciling import wait_for

YAML = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: web
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
"""


@pytest.fixture
def calls(monkeypatch):
    """Counts the WorkloadDefinition reconciler's runs; ``calls.fail`` makes the next runs raise."""
    real = reconcilers.reconciler_for(WorkloadDefinition.kind)

    class Calls:
        count = 0
        fail: list[BaseException] = []

    def counting(obj):
        Calls.count += 1
        if Calls.fail:
            raise Calls.fail.pop(0)
        real.reconcile(obj)

    monkeypatch.setitem(
        reconcilers._registry, WorkloadDefinition.kind, reconcilers.Reconciler(reconcile=counting, delete=real.delete)
    )
    return Calls


@pytest.fixture
def reconciling(database, broker, locks, calls):
    """The reconcile actor declared on the broker, and a worker running it."""
    declare_actors(broker, locks=locks, min_backoff=200, max_backoff=1000)
    worker = Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()


def create(broker, name="web", yaml=YAML) -> WorkloadDefinition:
    written = store.create(WorkloadDefinition, {"name": name, "yaml_document": yaml})
    publish_rows(broker, written.outbox)
    return written.obj


def observed(obj_id, generation=1) -> WorkloadDefinition | None:
    current = store.get(WorkloadDefinition, obj_id)
    return current if current.observed_generation >= generation else None


def resource_names(obj_id) -> list[str]:
    table = WorkloadResourceDefinition
    return [r.name for r in table.select().where(table.workload_definition == obj_id).order_by(table.position)]


def test_a_created_definition_is_reconciled_and_an_update_is_observed(broker, reconciling, calls):
    # Given a WorkloadDefinition created and published
    obj = create(broker)

    # Then it is reconciled within seconds, one resource row per document
    done = wait_for(lambda: observed(obj.id))
    assert (done.status, done.reconciled, done.creation_failed) == ({"phase": "Reconciled", "message": ""}, True, False)
    assert done.creation_acknowledged and done.creation_confirmed and not done.deletion_acknowledged
    assert resource_names(obj.id) == ["ConfigMap/web", "Deployment/web"]

    # When its YAML changes
    written = store.update(WorkloadDefinition, obj.id, {"yaml_document": YAML.split("---")[1]})
    publish_rows(broker, written.outbox)

    # Then the new generation is observed and the rows follow the YAML
    assert wait_for(lambda: observed(obj.id, 2)).generation == 2
    assert resource_names(obj.id) == ["Deployment/web"]
    assert calls.count == 2


def test_invalid_yaml_fails_permanently_without_burning_retries(broker, reconciling, calls):
    # Given a definition whose YAML does not parse
    obj = create(broker, yaml="kind: [unclosed\n")

    # Then the object shows the parser's message and creation_failed
    done = wait_for(lambda: observed(obj.id))
    assert done.status["phase"] == "Failed"
    assert "invalid YAML" in done.status["message"] and "flow sequence" in done.status["message"]
    assert done.creation_failed and not done.reconciled

    # And the reconciler ran once: no retry, nothing dead-lettered
    time.sleep(1.0)
    assert calls.count == 1
    stats = broker.queue_stats("workloads")
    assert (stats.ready, stats.delayed, stats.dead) == (0, 0, 0)


def test_a_message_delivered_twice_reconciles_once(broker, reconciling, calls):
    # Given an object whose reconcile message is enqueued twice (distinct Nats-Msg-Ids)
    written = store.create(WorkloadDefinition, {"name": "twice", "yaml_document": YAML})
    broker.enqueue(message_for(written.outbox[0]))
    broker.enqueue(message_for(written.outbox[0]))

    # Then the generation is observed, and the reconciler ran only once
    wait_for(lambda: observed(written.obj.id))
    time.sleep(1.5)
    assert calls.count == 1


def test_a_scheduled_deletion_removes_the_row(broker, reconciling):
    # Given a reconciled definition
    obj = create(broker)
    wait_for(lambda: observed(obj.id))

    # When its deletion is scheduled and published
    publish_rows(broker, store.schedule_deletion(WorkloadDefinition, obj.id).outbox)

    # Then the row and its resource rows go
    wait_for(lambda: WorkloadDefinition.get_or_none(WorkloadDefinition.id == obj.id) is None)
    assert resource_names(obj.id) == []


def test_a_deletion_the_reconciler_refuses_is_acknowledged_and_kept(broker, reconciling, monkeypatch):
    # Given a reconciled definition whose reconciler cannot delete what it made
    obj = create(broker)
    wait_for(lambda: observed(obj.id))
    real = reconcilers.reconciler_for(WorkloadDefinition.kind)

    def refuse(obj):
        raise PermanentError("the namespace is protected")

    monkeypatch.setitem(
        reconcilers._registry, WorkloadDefinition.kind, reconcilers.Reconciler(reconcile=real.reconcile, delete=refuse)
    )

    # When its deletion is scheduled and published
    publish_rows(broker, store.schedule_deletion(WorkloadDefinition, obj.id).outbox)

    # Then the object stays, showing that the deletion was taken in hand and why it failed
    failed = wait_for(lambda: (o := store.get(WorkloadDefinition, obj.id)).status["phase"] == "Failed" and o)
    assert failed.deletion_acknowledged and failed.deletion_scheduled is not None
    assert failed.status["message"] == "the namespace is protected"
    assert not failed.deletion_confirmed


def test_an_interrupted_object_is_not_reconciled_until_resumed(broker, reconciling, calls):
    # Given a reconciled definition
    obj = create(broker)
    wait_for(lambda: observed(obj.id))

    # When its reconciliation is interrupted, and then its YAML changes
    publish_rows(broker, store.update(WorkloadDefinition, obj.id, {"interrupt_reconciliation": True}).outbox)
    wait_for(lambda: observed(obj.id, 2))
    publish_rows(broker, store.update(WorkloadDefinition, obj.id, {"yaml_document": YAML.split("---")[1]}).outbox)

    # Then it reports Interrupted and its reconciler is not called: the old rows stay
    paused = wait_for(lambda: observed(obj.id, 3))
    assert paused.status["phase"] == "Interrupted" and not paused.reconciled
    assert calls.count == 1
    assert resource_names(obj.id) == ["ConfigMap/web", "Deployment/web"]
    assert Event.select().where(Event.object_id == obj.id, Event.reason == "Interrupted").count() == 1

    # When it is resumed, then it is reconciled as it is now
    publish_rows(broker, store.update(WorkloadDefinition, obj.id, {"interrupt_reconciliation": False}).outbox)
    resumed = wait_for(lambda: observed(obj.id, 4))
    assert resumed.status["phase"] == "Reconciled" and resumed.reconciled
    assert resource_names(obj.id) == ["Deployment/web"] and calls.count == 2


def test_an_interrupted_object_is_still_deleted(broker, reconciling):
    # Given a definition whose reconciliation is interrupted
    obj = create(broker)
    publish_rows(broker, store.update(WorkloadDefinition, obj.id, {"interrupt_reconciliation": True}).outbox)
    assert wait_for(lambda: observed(obj.id, 2)).status["phase"] == "Interrupted"

    # When its deletion is scheduled, then it goes all the same
    publish_rows(broker, store.schedule_deletion(WorkloadDefinition, obj.id).outbox)
    wait_for(lambda: WorkloadDefinition.get_or_none(WorkloadDefinition.id == obj.id) is None)


def test_a_held_lock_requeues_until_released(broker, reconciling, locks, calls):
    # Given someone else holds the object's lock
    written = store.create(WorkloadDefinition, {"name": "locked", "yaml_document": YAML})
    lease = locks.acquire(f"WorkloadDefinition.{written.obj.id}", ttl=30)

    # When its reconcile is published, then it waits without running or failing
    publish_rows(broker, written.outbox)
    time.sleep(1.5)
    assert calls.count == 0 and not observed(written.obj.id)

    # When the lock is released, then the object is reconciled, with no retry spent
    lease.release()
    done = wait_for(lambda: observed(written.obj.id))
    assert done.status["phase"] == "Reconciled" and calls.count == 1
    assert broker.queue_stats("workloads").dead == 0


def test_a_temporary_error_waits_then_reconciles(broker, reconciling, calls):
    # Given a reconciler whose dependency is not ready the first time
    calls.fail = [DependencyNotReady("the cluster is not ready", delay=0.5)]

    # When a definition is created, then it ends reconciled after a second run
    obj = create(broker)
    assert wait_for(lambda: observed(obj.id)).status["phase"] == "Reconciled"
    assert calls.count == 2


def test_an_unexpected_error_is_shown_and_retried(broker, reconciling, calls):
    # Given a reconciler that crashes twice
    calls.fail = [RuntimeError("boom"), RuntimeError("boom")]

    # When a definition is created, then its status shows the crash while it is retried
    obj = create(broker)
    failing = wait_for(lambda: store.get(WorkloadDefinition, obj.id).status.get("message", "").startswith("Runtime"))
    assert failing  # observed_generation stays 0 meanwhile
    # And Dramatiq's retries reconcile it in the end
    assert wait_for(lambda: observed(obj.id)).status["phase"] == "Reconciled"
    assert calls.count == 3


def test_one_thread_renews_every_lock_held_while_reconcilers_run(locks):
    # Given two leases of 1.5 s, kept by one keeper
    keeper = LeaseKeeper()
    leases = [locks.acquire(f"WorkloadDefinition.renewed-{n}", ttl=1.5) for n in range(2)]
    kept = [keeper.keep(lease) for lease in leases]

    # When they are held past their TTL, then both are still ours
    time.sleep(2.5)
    for each in kept:
        keeper.drop(each)
    assert not any(each.lost for each in kept)
    assert all(locks.holder_of(lease.key)["revision"] == lease.revision for lease in leases)
    assert all(lease.release() for lease in leases)


def test_a_kept_lock_that_someone_else_took_is_reported_lost(locks):
    # Given a lease that expired and was taken by another holder
    stale = locks.acquire("WorkloadDefinition.stolen", ttl=1.0)
    thief = wait_for(lambda: locks.acquire("WorkloadDefinition.stolen", ttl=30.0), timeout=5)

    # When the stale lease is kept, then its first renewal finds the key no longer its own
    kept = LeaseKeeper().keep(stale)
    wait_for(lambda: kept.lost, timeout=5)
    # And the new holder keeps the lock
    assert locks.holder_of("WorkloadDefinition.stolen")["revision"] == thief.revision
    assert thief.release()


@pytest.mark.parametrize(
    "yaml, error",
    [
        ("- a list\n", "document 0 is not a mapping"),
        ("apiVersion: v1\nkind: X\nmetadata:\n  name: a\n---\nkind: Y\n", "document 1 has no apiVersion, metadata"),
        ("", "the YAML holds no document"),
        ("a: b: c\n", "invalid YAML: mapping values are not allowed"),
    ],
)
def test_bad_documents_are_permanent_errors_naming_what_is_wrong(yaml, error):
    with pytest.raises(PermanentError, match=error):
        parse_documents(yaml)


def test_outbox_rows_are_gone_after_the_fast_path(broker, reconciling):
    create(broker)
    assert Outbox.select().count() == 0


def test_one_actor_serves_every_queue_it_is_declared_on(database, broker, locks, calls):
    # Given the actor declared on "default", also consuming the kind's queue "workloads"
    actor = declare_actors(broker, ["default", "workloads"], locks=locks)
    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        # When a reconcile message arrives on "workloads"
        obj = create(broker)

        # Then the one "reconcile" actor runs it
        assert actor.queue_name == "default" and broker.get_declared_queues() >= {"default", "workloads"}
        assert wait_for(lambda: observed(obj.id)).status["phase"] == "Reconciled"
        assert calls.count == 1
    finally:
        worker.stop()


def test_an_instance_waits_for_its_dependencies_then_reconciles(broker, reconciling, monkeypatch):
    # Given a WorkloadInstance reconciler that records its runs, and a runtime whose definition is data only
    runs = []
    monkeypatch.setitem(
        reconcilers._registry, WorkloadInstance.kind, reconcilers.Reconciler(reconcile=lambda obj: runs.append(obj.id))
    )
    runtime_definition = store.create(KubernetesRuntimeDefinition, {"name": "k", "infra_provider": "kubernetes"})
    runtime = store.create(
        KubernetesRuntimeInstance, {"name": "k1", "kubernetes_runtime_definition_id": runtime_definition.obj.id}
    )
    # And a workload definition that is not reconciled yet (its message is held back)
    definition = store.create(WorkloadDefinition, {"name": "web", "yaml_document": YAML})
    instance = store.create(
        WorkloadInstance,
        {
            "name": "web-1",
            "workload_definition_id": definition.obj.id,
            "kubernetes_runtime_instance_id": runtime.obj.id,
        },
    )
    publish_rows(broker, runtime_definition.outbox + instance.outbox)

    # Then the instance waits, saying for what, without running its reconciler or spending retries
    def waiting_for_definition():
        status = store.get(WorkloadInstance, instance.obj.id).status
        return "WorkloadDefinition 'web'" in status.get("message", "") and status

    assert wait_for(waiting_for_definition)["phase"] == "Waiting"
    assert runs == [] and store.get(KubernetesRuntimeDefinition, runtime_definition.obj.id).reconciled
    events = Event.select().where(Event.object_id == instance.obj.id)
    assert [(e.reason, e.type) for e in events] == [("DependencyNotReady", "Normal")]

    # When the definition and the runtime are reconciled (the runtime by a stand-in reconciler)
    monkeypatch.setitem(
        reconcilers._registry, KubernetesRuntimeInstance.kind, reconcilers.Reconciler(reconcile=lambda obj: None)
    )
    publish_rows(broker, definition.outbox + runtime.outbox)

    # Then the instance is reconciled on a later requeue, and its events tell the story
    done = wait_for(lambda: observed_of(WorkloadInstance, instance.obj.id), timeout=20)
    assert done.reconciled and runs == [instance.obj.id]
    reasons = [e.reason for e in Event.select().where(Event.object_id == instance.obj.id).order_by(Event.created_at)]
    assert reasons[0] == "DependencyNotReady" and reasons[-1] == "Reconciled"


def test_a_kind_without_a_reconciler_fails_visibly(broker, reconciling, monkeypatch):
    # Given a kind with no reconciler (a data-only definition taken out of the registry)
    monkeypatch.delitem(reconcilers._registry, DomainNameDefinition.kind)
    written = store.create(
        DomainNameDefinition, {"name": "d", "domain": "example.com", "admin_email": "ops@example.com"}
    )
    publish_rows(broker, written.outbox)

    # Then the object says so, as a permanent failure and a Warning event
    done = wait_for(lambda: observed_of(DomainNameDefinition, written.obj.id))
    assert done.creation_failed and done.status["message"] == "no reconciler for kind DomainNameDefinition"
    assert [(e.reason, e.type) for e in Event.select().where(Event.object_id == written.obj.id)] == [
        ("Failed", "Warning")
    ]


def test_instances_apply_their_definitions_new_documents(broker, reconciling, monkeypatch):
    # Given a workload instance reconciled by a stand-in that records the documents it saw
    seen = []

    def apply(instance):
        table = WorkloadResourceDefinition
        rows = table.select().where(table.workload_definition == instance.workload_definition_id)
        seen.append(sorted(row.name for row in rows))

    monkeypatch.setitem(reconcilers._registry, WorkloadInstance.kind, reconcilers.Reconciler(reconcile=apply))
    monkeypatch.setitem(
        reconcilers._registry, KubernetesRuntimeInstance.kind, reconcilers.Reconciler(reconcile=lambda obj: None)
    )
    definition = create(broker)
    wait_for(lambda: observed(definition.id))
    instance = store.create(WorkloadInstance, {"name": "web-1", "workload_definition_id": definition.id})
    publish_rows(broker, instance.outbox)
    wait_for(lambda: observed_of(WorkloadInstance, instance.obj.id))

    # When the definition's YAML loses a document
    written = store.update(WorkloadDefinition, definition.id, {"yaml_document": YAML.split("---")[1]})
    publish_rows(broker, written.outbox)
    wait_for(lambda: observed(definition.id, 2))
    relay_rows = store.pending_outbox(older_than_seconds=0, limit=10)  # the worker's request, left for the relay
    publish_rows(broker, relay_rows)

    # Then the instance is reconciled again and sees the new documents
    assert wait_for(lambda: observed_of(WorkloadInstance, instance.obj.id) and len(seen) >= 2)
    assert seen == [["ConfigMap/web", "Deployment/web"], ["Deployment/web"]]
