"""Runtimes and workload instances end to end: real PostgreSQL, real NATS, a real Dramatiq worker running
the reconcile actor, and the real ``kubernetes`` client over HTTP to the API server stand-in (tests/kube.py).

The stand-in runs no controllers: a Deployment is ready when a test says so
(``kube.set_status``), pods and events are what a test puts there. The
apply, re-apply, prune and delete stories are scenarios of
tests/kube_scenarios.py, which tests/test_kubernetes_real.py runs on a real
cluster too; the tests here add what only the stand-in can tell.
"""

from __future__ import annotations

import base64
from typing import Optional

import pytest
from dramatiq import Worker

from cli.local_servers import free_port
from models import (
    AwsAccount,
    AwsObjectStorageBucketDefinition,
    AwsObjectStorageBucketInstance,
    AwsRelationalDatabaseDefinition,
    AwsRelationalDatabaseInstance,
    KubernetesRuntimeInstance,
    WorkloadEvent,
    WorkloadInstance,
    store,
)
from tasks import actor, aws_rds, kubernetes_runtimes, workload_instances
from tasks.actor import declare_actors
from tasks.kubernetes_adapter import RetryPolicy
from tasks.workload_instances import INSTANCE_LABEL
from workers.locks import LockManager
from workers.outbox_relay import publish_rows

from . import kube_scenarios as scenarios
from .kube import runtime_for
from .kube_scenarios import (
    CONFIG_MAP,
    DEPLOYMENT,
    WEB,
    WEB_OBJECTS,
    StandIn,
    definition,
    deploy,
    healthy,
    instance,
    namespace_of,
    rows,
    update,
    with_health,
)
from .reconciling import observed, wait_for

# Fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture
def locks(broker, prefix):
    manager = LockManager(connection=broker.connection, bucket=f"locks_{prefix}")
    yield manager
    manager.delete_bucket()


@pytest.fixture
def fast(monkeypatch):
    """Short retries, backoffs and health polls, so waiting takes a fraction of a second."""
    monkeypatch.setattr(kubernetes_runtimes, "RETRY_POLICY", RetryPolicy(attempts=2, initial=0.01, ceiling=0.05))
    monkeypatch.setattr(workload_instances, "HEALTH_POLL", 0.2)
    monkeypatch.setattr(workload_instances, "HEALTH_POLL_CEILING", 0.5)
    monkeypatch.setattr(actor, "DEPENDENCY_BACKOFF", (0.2, 0.5))
    yield
    kubernetes_runtimes.forget_clusters()


@pytest.fixture
def reconciling(database, broker, locks, fast):
    """The reconcile actor on the ``workloads`` and ``kubernetes`` queues, and a worker running it."""
    declare_actors(broker, ["workloads", "kubernetes"], locks=locks, min_backoff=200, max_backoff=1000)
    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()


def deployed(kube, broker, runtime, yaml: str = WEB) -> WorkloadInstance:
    """An instance of ``yaml`` on ``runtime``, deployed, its Deployment made ready, observed Healthy."""
    return deploy(StandIn(kube), broker, runtime, yaml=yaml)


# Runtimes ---------------------------------------------------------------------------------------


def test_a_runtime_reconciles_with_its_version_and_node_count(kube, broker, reconciling):
    # Given a KubernetesRuntimeInstance pointing at the stand-in, published for its reconciler
    runtime = runtime_for(kube.url, reconciled=False, publish=lambda outbox: publish_rows(broker, outbox))

    # Then it is reconciled with the server's version and node count in its status
    done = wait_for(lambda: observed(KubernetesRuntimeInstance, runtime.id))
    assert done.reconciled and done.status["phase"] == "Reconciled"
    assert done.status["server_version"] == "v1.26.4+k3s1" and done.status["node_count"] == 2


def test_an_unreachable_runtime_waits_and_then_reconciles(kube, broker, reconciling):
    # Given a runtime whose API server fails every request for now
    kube.fail(503, times=10_000, message="the API server is restarting")
    runtime = runtime_for(kube.url, reconciled=False, publish=lambda outbox: publish_rows(broker, outbox))

    # Then it waits, saying why, without failing
    waiting = wait_for(lambda: runtime_saying(runtime.id, "restarting"))
    assert waiting.status["phase"] == "Waiting" and not waiting.creation_failed and not waiting.reconciled

    # When the API server is back, then it reconciles
    kube.clear_faults()
    assert wait_for(lambda: observed(KubernetesRuntimeInstance, runtime.id)).status["node_count"] == 2


def test_a_runtime_with_rejected_credentials_fails_permanently(kube, broker, reconciling):
    # Given an API server that wants another token than the runtime's
    kube.require_token("the-right-one")
    runtime = runtime_for(
        kube.url, token="a-wrong-one", reconciled=False, publish=lambda outbox: publish_rows(broker, outbox)
    )

    # Then it fails once, for good, naming the reason
    failed = wait_for(lambda: observed(KubernetesRuntimeInstance, runtime.id))
    assert failed.status["phase"] == "Failed" and failed.creation_failed
    assert "401" in failed.status["message"] and "rejects the credentials" in failed.status["message"]


def test_a_runtime_reached_over_tls_with_a_client_certificate_reconciles(kube_tls, broker, reconciling):
    # Given a runtime with the CA of a TLS API server and a client certificate it accepts
    api, tls = kube_tls
    api.reset(nodes=3)
    runtime = runtime_for(
        api.url,
        reconciled=False,
        publish=lambda outbox: publish_rows(broker, outbox),
        ca_certificate=tls.ca,
        certificate=tls.client_certificate,
        certificate_key=tls.client_key,
    )

    # Then it reconciles, having reached the cluster
    assert wait_for(lambda: observed(KubernetesRuntimeInstance, runtime.id)).status["node_count"] == 3


# Workload instances -----------------------------------------------------------------------------


def test_an_instance_deploys_its_documents_labelled_and_records_them(kube, broker, reconciling):
    scenarios.an_instance_deploys_its_documents_labelled(StandIn(kube), broker)


def test_reconciling_the_same_documents_again_writes_nothing(kube, broker, reconciling):
    scenarios.reapplying_the_same_documents_writes_nothing(StandIn(kube), broker)


def test_a_document_that_leaves_the_definition_is_pruned(kube, broker, reconciling):
    scenarios.a_document_that_leaves_the_definition_is_pruned(StandIn(kube), broker)

    # And no ConfigMap is left anywhere
    assert kube.names("v1", "ConfigMap") == []


def test_deleting_an_instance_removes_everything_and_confirms(kube, broker, reconciling):
    # Given a deployed instance, deleted: nothing of it is left (the scenario)
    obj = scenarios.deleting_an_instance_removes_everything(StandIn(kube), broker)
    namespace = obj.status["namespace"]

    # And nothing of its kinds is left anywhere: its objects were deleted in reverse order, then the namespace it made
    for api_version, kind, _ in WEB_OBJECTS:
        assert kube.names(api_version, kind) == []
    deletes = [path for method, path in kube.requests() if method == "DELETE"]
    assert deletes[-1] == f"/api/v1/namespaces/{namespace}"
    assert deletes[:3] == [
        f"/api/v1/namespaces/{namespace}/services/web",
        f"/apis/apps/v1/namespaces/{namespace}/deployments/web",
        f"/api/v1/namespaces/{namespace}/configmaps/web-settings",
    ]


def test_the_default_runtime_is_used_when_none_is_named(kube, broker, reconciling):
    # Given a default runtime and a definition
    runtime_for(kube.url, default=True)

    # When an instance names no runtime, then it is deployed to the default one
    obj = instance(broker, definition(broker, CONFIG_MAP))
    done = wait_for(lambda: observed(WorkloadInstance, obj.id))
    assert done.status["health"] == "Healthy" and done.kubernetes_runtime_instance_id is None
    assert kube.live("v1", "ConfigMap", done.status["namespace"], "web-settings") is not None


def test_an_instance_without_any_runtime_waits_saying_so(kube, broker, reconciling):
    # Given no runtime at all, when an instance names none
    obj = instance(broker, definition(broker, CONFIG_MAP))

    # Then it waits, without failing, saying what is missing
    waiting = wait_for(lambda: saying(obj.id, "default_runtime"))
    assert waiting.status["phase"] == "Waiting" and not waiting.creation_failed


def test_an_unreachable_runtime_makes_the_instance_wait_not_fail(kube, broker, reconciling):
    # Given a runtime nobody answers at (its reconcile keeps waiting), and an instance on it
    lost = runtime_for(f"http://127.0.0.1:{free_port()}", reconciled=False, publish=lambda o: publish_rows(broker, o))
    obj = instance(broker, definition(broker, CONFIG_MAP), lost)

    # Then the instance waits for it, saying why, without failing
    waiting = wait_for(lambda: saying(obj.id, "cannot reach the cluster"))
    assert "waiting for KubernetesRuntimeInstance" in waiting.status["message"]
    assert waiting.status["phase"] == "Waiting" and not waiting.creation_failed

    # Given a runtime that was reachable but whose API server now fails every request
    runtime = runtime_for(kube.url, name="flaky")
    kube.fail(503, times=10_000, path="/namespaces", message="the API server is restarting")
    other = instance(broker, definition(broker, CONFIG_MAP, name="other"), runtime, name="other")

    # Then that instance waits too, saying why, and reconciles once the API server is back
    waiting = wait_for(lambda: saying(other.id, "restarting"))
    assert waiting.status["phase"] == "Waiting" and not waiting.creation_failed
    kube.clear_faults()
    assert wait_for(lambda: observed(WorkloadInstance, other.id)).status["health"] == "Healthy"


def runtime_saying(runtime_id, text: str) -> Optional[KubernetesRuntimeInstance]:
    current = store.get(KubernetesRuntimeInstance, runtime_id)
    return current if text in current.status.get("message", "") else None


def saying(instance_id, text: str) -> Optional[WorkloadInstance]:
    """The instance once its status message says ``text``."""
    current = store.get(WorkloadInstance, instance_id)
    return current if text in current.status.get("message", "") else None


def test_a_crash_looping_pod_is_unhealthy_and_events_are_recorded_once(kube, broker, reconciling):
    # Given a deployed instance whose pod then crash loops, with the events Kubernetes reports about it
    obj = deployed(kube, broker, runtime_for(kube.url))
    namespace = obj.status["namespace"]
    kube.put(pod("web-7d4b9-x2x", namespace, obj.id, waiting="CrashLoopBackOff"))
    for _ in range(2):  # reported twice: one row
        kube.put(event("web-7d4b9-x2x.1", namespace, "Pod", "web-7d4b9-x2x", "BackOff", "Back-off restarting"))
    kube.put(event("web.1", namespace, "Deployment", "web", "ScalingReplicaSet", "Scaled up to 2"))
    kube.put(event("unrelated.1", namespace, "Pod", "someone-else", "Pulled", "not ours"))

    # When it is reconciled again (a new generation: same documents)
    update(broker, WorkloadInstance, obj.id, {"workload_definition_id": definition(broker, name="again").id})

    # Then it is Unhealthy, naming the pod, while it is being looked at again
    unhealthy = wait_for(lambda: with_health(obj.id, "Unhealthy"))
    assert unhealthy.status["unhealthy_pods"] == [f"{namespace}/web-7d4b9-x2x: CrashLoopBackOff"]

    # And the events about its objects are WorkloadEvents, one per (object, reason, message)
    events = wait_for(lambda: _events(obj.id) if len(_events(obj.id)) == 2 else None)
    assert events == [
        (f"{namespace}/Deployment/web", "ScalingReplicaSet", "Scaled up to 2", "Normal"),
        (f"{namespace}/Pod/web-7d4b9-x2x", "BackOff", "Back-off restarting", "Warning"),
    ]

    # When the pod recovers, then it is Healthy again and the events were not duplicated by the looks
    kube.put(pod("web-7d4b9-x2x", namespace, obj.id, waiting=None))
    wait_for(lambda: healthy(obj.id))
    assert len(_events(obj.id)) == 2


def pod(name: str, namespace: str, instance_id, *, waiting: Optional[str]) -> dict:
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    metadata = {"name": name, "namespace": namespace, "labels": {"app": "web", INSTANCE_LABEL: str(instance_id)}}
    status = {"containerStatuses": [{"name": "web", "ready": waiting is None, "state": state}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": status}


def event(name: str, namespace: str, kind: str, involved: str, reason: str, message: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {"kind": kind, "name": involved, "namespace": namespace},
        "reason": reason,
        "message": message,
        "type": "Warning" if reason == "BackOff" else "Normal",
        "lastTimestamp": "2026-01-01T10:00:00Z" if kind == "Deployment" else "2026-01-01T10:05:00Z",
    }


def _events(instance_id) -> list[tuple]:
    table = WorkloadEvent
    query = table.select().where(table.workload_instance == instance_id).order_by(table.last_seen)
    return [(e.involved_object, e.reason, e.message, e.type) for e in query]


def test_attached_database_and_bucket_give_the_workload_a_secret_and_env(kube, broker, reconciling):
    # Given an instance (not yet published) with a database and a bucket attached, both built already
    runtime = runtime_for(kube.url)
    workload = definition(broker, "---\n".join([CONFIG_MAP, DEPLOYMENT]))
    fields = {"name": "web", "workload_definition_id": workload.id, "kubernetes_runtime_instance_id": runtime.id}
    written = store.create(WorkloadInstance, fields)
    obj = written.obj
    attach_database(obj, connection={"host": "db.example", "port": 5432, "database": "shop", "username": "threeport"})
    attach_bucket(obj, env={"S3_BUCKET_NAME": "shop-assets-123"})

    # When the instance is published
    publish_rows(broker, written.outbox)

    # Then the database's Secret is next to the Deployment, with the connection and password
    namespace = namespace_of(obj.id)
    secret = wait_for(lambda: kube.live("v1", "Secret", namespace, "shop-db"))
    decoded = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert decoded == {
        "host": "db.example",
        "port": "5432",
        "database": "shop",
        "username": "threeport",
        "password": "s3cret-password",
    }
    assert secret["metadata"]["labels"][INSTANCE_LABEL] == str(obj.id)

    # And the Deployment's containers have the bucket's env var; the Secret is not a resource row
    deployment = kube.live("apps/v1", "Deployment", namespace, "web")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "S3_BUCKET_NAME", "value": "shop-assets-123"}
    ]
    assert all("Secret" not in name for name in rows(obj.id))

    # When the database's deletion begins (its reconciler's first run)
    database = AwsRelationalDatabaseInstance.get(AwsRelationalDatabaseInstance.workload_instance == obj.id)
    store.schedule_deletion(AwsRelationalDatabaseInstance, database.id)
    aws_rds.delete_database(store.get(AwsRelationalDatabaseInstance, database.id))
    publish_rows(broker, store.pending_outbox(older_than_seconds=0, limit=100))

    # Then the workload lets go of it: its Secret is gone, the Deployment stays
    wait_for(lambda: kube.live("v1", "Secret", namespace, "shop-db") is None)
    assert kube.live("apps/v1", "Deployment", namespace, "web") is not None


def attach_database(obj: WorkloadInstance, *, connection: dict) -> None:
    fields = {
        "name": "main",
        "account_id": "123456789012",
        "default_region": "us-east-1",
        "role_arn": "arn:aws:iam::1:role/x",
    }
    account = reconciled(AwsAccount, fields)
    fields = {
        "name": "shop-db",
        "aws_account_id": account.id,
        "engine": "postgres",
        "engine_version": "16.4",
        "database_name": "shop",
        "database_port": 5432,
        "workload_secret_name": "shop-db",
    }
    db_definition = reconciled(AwsRelationalDatabaseDefinition, fields)
    fields = {
        "name": "shop-db",
        "aws_relational_database_definition_id": db_definition.id,
        "workload_instance_id": obj.id,
    }
    database = store.create(AwsRelationalDatabaseInstance, fields).obj
    store.write_fields(AwsRelationalDatabaseInstance, database.id, {"master_password": "s3cret-password"})
    store.merge_status(AwsRelationalDatabaseInstance, database.id, {"connection": connection})


def attach_bucket(obj: WorkloadInstance, *, env: dict) -> None:
    account = AwsAccount.get()
    fields = {"name": "assets", "aws_account_id": account.id, "workload_service_account_name": "web"}
    bucket_definition = reconciled(AwsObjectStorageBucketDefinition, fields)
    fields = {"name": "assets", "aws_object_storage_bucket_definition_id": bucket_definition.id}
    bucket = store.create(AwsObjectStorageBucketInstance, fields | {"workload_instance_id": obj.id}).obj
    store.merge_status(AwsObjectStorageBucketInstance, bucket.id, {"env": env})


def reconciled(model, fields):
    obj = store.create(model, fields).obj
    store.write_status(model, obj.id, generation=obj.generation, status={"phase": "Reconciled"}, reconciled=True)
    return obj
