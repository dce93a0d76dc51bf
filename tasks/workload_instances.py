"""The WorkloadInstance reconciler: deploy a definition's documents to a runtime, prune, report, tear down.

A reconcile plans the objects (every document of the definition, in its own
namespace, else the definition's only ``Namespace`` document's, else
``<instance-name>-<id prefix>``; labelled :data:`INSTANCE_LABEL` = the
instance id, pod templates too; plus the Secret and env vars of the AWS
databases and buckets attached to the instance), records in the status
``inventory`` which kinds and namespaces it is about to touch *before*
touching them, makes the namespaces that are missing (remembering which it
made), server-side applies every object (namespaces first, then YAML
order), records one :class:`WorkloadResourceInstance` per document, and
prunes: every live object carrying the instance's label, of a kind and in a
namespace the inventory names, that the plan no longer has is deleted.

Then it reports the health of the live objects in the status (``health``:
``Healthy``; ``Progressing`` while Deployments, StatefulSets or DaemonSets
have fewer ready replicas than desired; ``Unhealthy`` when a pod is crash
looping) and records the Kubernetes events about them as
:class:`WorkloadEvent` rows. Until it is healthy and its attachments are in,
the instance is marked ``reconciled`` (what depends on it may go on) but its
generation is left unobserved and it is requeued to look again, less and
less often, for :data:`HEALTH_WINDOW` seconds; a look that finds the same
plan applied already applies nothing.

Deleting removes every object it applied (reverse order) and anything else
carrying its label, then the namespaces it made; what is gone already is
fine.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from models import store
from models.aws import (
    AwsObjectStorageBucketInstance,
    AwsRelationalDatabaseDefinition,
    AwsRelationalDatabaseInstance,
)
from models.base import utcnow
from models.kubernetes import KubernetesRuntimeInstance
from models.transactions import transactional
from models.workloads import WorkloadEvent, WorkloadInstance, WorkloadResourceDefinition, WorkloadResourceInstance

from .errors import DependencyNotReady, TemporaryError
from .kubernetes_adapter import Cluster, KubernetesUnknownKind, identity
from .kubernetes_runtimes import connect
from .reconcilers import Reconciler, register

__all__ = [
    "reconcile_workload_instance",
    "delete_workload_instance",
    "INSTANCE_LABEL",
    "CREATED_FOR_LABEL",
    "HEALTH_POLL",
    "HEALTH_WINDOW",
]

#: The label tying an object to its WorkloadInstance (the value is the instance id).
INSTANCE_LABEL = "threeport.io/workload-instance"
#: The label of a namespace made for an instance (not INSTANCE_LABEL: pruning must not find it).
CREATED_FOR_LABEL = "threeport.io/created-for"
_ANNOTATION_NAME = "threeport.io/workload-instance-name"
_ANNOTATION_KIND = "threeport.io/object-kind"
#: First delay (s) between two looks at a workload that is not healthy yet; it grows 1.5 times per look.
HEALTH_POLL = 5.0
#: Longest delay (s) between two looks.
HEALTH_POLL_CEILING = 60.0
#: How long (s) after applying a generation it is looked at until healthy.
HEALTH_WINDOW = 30 * 60.0
#: Events recorded per reconcile at most (the newest).
MAX_EVENTS = 100

#: Kinds whose pods are told apart by the instance label, and get attached buckets' env vars.
_POD_TEMPLATES = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
_REPLICATED = ("Deployment", "StatefulSet", "DaemonSet")
_BROKEN_POD_REASONS = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "InvalidImageName"}
)


@dataclass
class _Planned:
    """One object to apply: its threeport name, apply order, body, and whether it is one of the documents."""

    name: str
    position: int
    body: dict[str, Any]
    document: bool = True

    @property
    def ref(self) -> dict[str, Any]:
        metadata = self.body["metadata"]
        ref = {"apiVersion": self.body["apiVersion"], "kind": self.body["kind"], "name": metadata["name"]}
        return ref | ({"namespace": metadata["namespace"]} if metadata.get("namespace") else {})


@dataclass
class _Plan:
    objects: list[_Planned]
    namespace: str
    pending: list[str] = field(default_factory=list)
    attached: dict[str, Any] = field(default_factory=dict)

    @property
    def namespaces(self) -> list[str]:
        return sorted({p.body["metadata"]["namespace"] for p in self.objects if p.body["metadata"].get("namespace")})

    @property
    def declared_namespaces(self) -> set[str]:
        return {p.body["metadata"]["name"] for p in self.objects if _is_namespace(p.body)}

    @property
    def kinds(self) -> list[tuple[str, str]]:
        return sorted({(p.body["apiVersion"], p.body["kind"]) for p in self.objects})

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([p.body for p in self.objects], sort_keys=True).encode()).hexdigest()


# Reconcile --------------------------------------------------------------------------


def reconcile_workload_instance(instance: WorkloadInstance) -> None:
    """Make the runtime run the definition's documents as this instance; requeue until they are healthy."""
    runtime = _runtime_of(instance)
    documents = _documents_of(instance)
    status = dict(instance.status or {})
    inventory = dict(status.get("inventory") or {})
    if inventory.get("runtime_id") not in (None, str(runtime.id)):  # moved to another cluster: leave the old one
        _leave_old_runtime(instance, inventory)
        inventory, status = {}, {}
    cluster = connect(runtime)
    plan = _plan(cluster, instance, documents)
    digest = plan.digest()
    if status.get("applied_generation") != instance.generation or status.get("applied_digest") != digest:
        inventory = _apply(cluster, instance, plan, inventory | {"runtime_id": str(runtime.id)})
        status = {"applied_generation": instance.generation, "applied_digest": digest, "health_checks": 0}
        status["health_since"] = utcnow().isoformat()
        store.merge_status(WorkloadInstance, instance.id, {"inventory": inventory, **status})
    _report(cluster, instance, plan, status)


def delete_workload_instance(instance: WorkloadInstance) -> None:
    """Remove what the instance applied and the namespaces it made, from the cluster it applied them to."""
    inventory = (instance.status or {}).get("inventory") or {}
    if not inventory.get("runtime_id"):
        return  # nothing was ever applied
    runtime = KubernetesRuntimeInstance.get_or_none(KubernetesRuntimeInstance.id == inventory["runtime_id"])
    if runtime is None:
        return  # the cluster is gone from the control plane: nothing left to reach
    _remove(connect(runtime), instance, inventory)


def _runtime_of(instance: WorkloadInstance) -> KubernetesRuntimeInstance:
    """The instance's runtime, or the default runtime; TemporaryError while there is none ready."""
    if instance.kubernetes_runtime_instance_id is not None:
        return store.get(KubernetesRuntimeInstance, instance.kubernetes_runtime_instance_id)
    table = KubernetesRuntimeInstance
    runtime = table.select().where(table.default_runtime & table.deletion_scheduled.is_null()).first()
    if runtime is None:
        raise TemporaryError(
            "no runtime to deploy to: name a kubernetes_runtime_instance or make one the default_runtime", delay=None
        )
    if not runtime.reconciled:
        raise DependencyNotReady(f"waiting for the default runtime {runtime.name!r} to be reconciled")
    return runtime


def _documents_of(instance: WorkloadInstance) -> list[WorkloadResourceDefinition]:
    table = WorkloadResourceDefinition
    query = table.select().where(table.workload_definition == instance.workload_definition_id)
    documents = list(query.order_by(table.position))
    if not documents:
        raise TemporaryError("the workload definition has no documents recorded yet", delay=None)
    return documents


def _leave_old_runtime(instance: WorkloadInstance, inventory: dict[str, Any]) -> None:
    old = KubernetesRuntimeInstance.get_or_none(KubernetesRuntimeInstance.id == inventory["runtime_id"])
    if old is not None:
        _remove(connect(old), instance, inventory)
    store.merge_status(WorkloadInstance, instance.id, {"inventory": {}, "applied_generation": None})


# Planning ---------------------------------------------------------------------------


def _plan(cluster: Cluster, instance: WorkloadInstance, documents: list[WorkloadResourceDefinition]) -> _Plan:
    """The objects to apply, labelled, in their namespaces, in apply order, with the attached AWS resources'."""
    namespaces = [d.json_definition["metadata"]["name"] for d in documents if _is_namespace(d.json_definition)]
    default_namespace = namespaces[0] if len(namespaces) == 1 else _derived_namespace(instance)
    objects = []
    for document in documents:
        body = _labelled(copy.deepcopy(document.json_definition), instance)
        metadata = body["metadata"]
        if cluster.is_namespaced(body["apiVersion"], body["kind"]):
            metadata["namespace"] = metadata.get("namespace") or default_namespace
        else:
            metadata.pop("namespace", None)
        objects.append(_Planned(identity(body), document.position, body))
    objects.sort(key=lambda p: (not _is_namespace(p.body), p.position))
    plan = _Plan(objects, default_namespace)
    _attach_aws(plan, instance)
    return plan


def _labelled(body: dict[str, Any], instance: WorkloadInstance) -> dict[str, Any]:
    """``body`` with the instance's label and annotations, on its pod template too."""
    metadata = body.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), INSTANCE_LABEL: str(instance.id)}
    annotations = {_ANNOTATION_NAME: instance.name, _ANNOTATION_KIND: instance.kind}
    metadata["annotations"] = {**(metadata.get("annotations") or {}), **annotations}
    template = _pod_template(body)
    if template is not None:
        template_metadata = template.setdefault("metadata", {})
        template_metadata["labels"] = {**(template_metadata.get("labels") or {}), INSTANCE_LABEL: str(instance.id)}
    return body


def _pod_template(body: dict[str, Any]) -> Optional[dict[str, Any]]:
    path = _POD_TEMPLATES.get(body.get("kind", ""))
    if path is None:
        return None
    node = body
    for key in path:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            return None
    return node


def _derived_namespace(instance: WorkloadInstance) -> str:
    """``<instance-name>-<8 hex of its id>``, as a DNS label."""
    slug = re.sub(r"[^a-z0-9-]+", "-", instance.name.lower()).strip("-")[:50].strip("-") or "workload"
    return f"{slug}-{instance.id.hex[:8]}"


def _is_namespace(body: dict[str, Any]) -> bool:
    return body.get("apiVersion") == "v1" and body.get("kind") == "Namespace"


def _attach_aws(plan: _Plan, instance: WorkloadInstance) -> None:
    """Add the Secret of each attached database and the env vars of each attached bucket; note what is pending."""
    workload_namespaces = sorted(
        {p.body["metadata"]["namespace"] for p in plan.objects if p.body["kind"] in _REPLICATED}
    ) or [plan.namespace]
    databases = AwsRelationalDatabaseInstance.select().where(
        (AwsRelationalDatabaseInstance.workload_instance == instance.id)
        & AwsRelationalDatabaseInstance.deletion_scheduled.is_null()
    )
    secrets = []
    for database in databases:
        connection = (database.status or {}).get("connection")
        if not connection or not database.master_password:
            plan.pending.append(f"database {database.name!r} to record its connection")
            continue
        definition = store.get(AwsRelationalDatabaseDefinition, database.aws_relational_database_definition_id)
        for namespace in workload_namespaces:
            secret = _database_secret(definition.workload_secret_name, namespace, connection, database.master_password)
            plan.objects.append(_Planned(identity(secret), len(plan.objects), _labelled(secret, instance), False))
            secrets.append(identity(secret))
    env = _bucket_env(plan, instance)
    for planned in plan.objects:
        template = _pod_template(planned.body) if planned.body["kind"] in _REPLICATED else None
        if template is not None and env:
            _inject_env(template, env)
    plan.attached = {"secrets": secrets, "env": sorted(env)}


def _database_secret(name: str, namespace: str, connection: dict[str, Any], password: str) -> dict[str, Any]:
    values = {
        "host": connection.get("host"),
        "port": connection.get("port"),
        "database": connection.get("database"),
        "username": connection.get("username"),
        "password": password,
    }
    if connection.get("engine"):
        values["engine"] = connection["engine"]
    data = {key: base64.b64encode(str(value).encode()).decode() for key, value in values.items() if value is not None}
    metadata = {"name": name, "namespace": namespace}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque", "data": data}


def _bucket_env(plan: _Plan, instance: WorkloadInstance) -> dict[str, str]:
    buckets = AwsObjectStorageBucketInstance.select().where(
        (AwsObjectStorageBucketInstance.workload_instance == instance.id)
        & AwsObjectStorageBucketInstance.deletion_scheduled.is_null()
    )
    env: dict[str, str] = {}
    for bucket in buckets:
        values = (bucket.status or {}).get("env")
        if not values:
            plan.pending.append(f"bucket {bucket.name!r} to record its name")
            continue
        env.update({str(key): str(value) for key, value in values.items()})
    return env


def _inject_env(template: dict[str, Any], env: dict[str, str]) -> None:
    for container in (template.get("spec") or {}).get("containers") or []:
        kept = [var for var in container.get("env") or [] if var.get("name") not in env]
        container["env"] = kept + [{"name": name, "value": value} for name, value in sorted(env.items())]


# Applying and pruning ---------------------------------------------------------------


def _apply(cluster: Cluster, instance: WorkloadInstance, plan: _Plan, inventory: dict[str, Any]) -> dict[str, Any]:
    """Apply the plan, record its rows, prune what left it; the new inventory."""
    touched = {
        **inventory,
        "kinds": _union(inventory.get("kinds"), plan.kinds),
        "namespaces": _union(inventory.get("namespaces"), plan.namespaces),
        "namespaces_created": list(inventory.get("namespaces_created") or []),
    }
    store.merge_status(WorkloadInstance, instance.id, {"inventory": touched})  # before touching anything
    for namespace in plan.namespaces:
        if namespace in plan.declared_namespaces or namespace in touched["namespaces_created"]:
            continue
        if cluster.ensure_namespace(namespace, labels={CREATED_FOR_LABEL: str(instance.id)}):
            touched["namespaces_created"].append(namespace)
            store.merge_status(WorkloadInstance, instance.id, {"inventory": touched})
    for planned in plan.objects:
        cluster.apply(planned.body)
    _record_resources(instance.id, [p for p in plan.objects if p.document])
    _prune(cluster, instance, plan, touched)
    unused = [ns for ns in touched["namespaces_created"] if ns not in plan.namespaces]
    for namespace in unused:
        cluster.delete("v1", "Namespace", namespace)
    created = [ns for ns in touched["namespaces_created"] if ns not in unused]
    return {
        "runtime_id": touched["runtime_id"],
        "kinds": plan.kinds,
        "namespaces": plan.namespaces,
        "namespaces_created": created,
        "objects": [p.ref for p in plan.objects],
    }


def _prune(cluster: Cluster, instance: WorkloadInstance, plan: _Plan, inventory: dict[str, Any]) -> None:
    """Delete the labelled objects the plan no longer has."""
    wanted = {p.name for p in plan.objects}
    for live in _labelled_objects(cluster, instance, inventory):
        if identity(live) not in wanted:
            metadata = live["metadata"]
            cluster.delete(live["apiVersion"], live["kind"], metadata["name"], metadata.get("namespace"))


def _labelled_objects(cluster: Cluster, instance: WorkloadInstance, inventory: dict[str, Any]) -> Iterable[dict]:
    """The live objects carrying the instance's label, of the inventory's kinds, in its namespaces."""
    selector = f"{INSTANCE_LABEL}={instance.id}"
    namespaces = _union(inventory.get("namespaces"), inventory.get("namespaces_created"))
    for api_version, kind in inventory.get("kinds") or []:
        try:
            namespaced = cluster.is_namespaced(api_version, kind)
        except KubernetesUnknownKind:
            continue  # the cluster serves it no more: none can be left
        for namespace in namespaces if namespaced else [None]:
            yield from cluster.list(api_version, kind, namespace=namespace, label_selector=selector)


def _remove(cluster: Cluster, instance: WorkloadInstance, inventory: dict[str, Any]) -> None:
    """Delete what the inventory lists (reverse order), anything else labelled, then the namespaces made."""
    for ref in reversed(inventory.get("objects") or []):
        try:
            cluster.delete(ref["apiVersion"], ref["kind"], ref["name"], ref.get("namespace"))
        except KubernetesUnknownKind:
            continue
    for live in list(_labelled_objects(cluster, instance, inventory)):
        metadata = live["metadata"]
        cluster.delete(live["apiVersion"], live["kind"], metadata["name"], metadata.get("namespace"))
    made = set(inventory.get("namespaces_created") or [])
    made |= {
        ns["metadata"]["name"]
        for ns in cluster.list("v1", "Namespace", label_selector=f"{CREATED_FOR_LABEL}={instance.id}")
    }
    for namespace in sorted(made):
        cluster.delete("v1", "Namespace", namespace)


@transactional
def _record_resources(instance_id: Any, planned: list[_Planned]) -> None:
    """Make the instance's resource rows exactly ``planned`` (an upsert, then a delete of the others)."""
    table = WorkloadResourceInstance
    rows = [
        {
            table.workload_instance: instance_id,
            table.name: p.name,
            table.position: p.position,
            "json_definition": p.body,
        }
        for p in planned
    ]
    if rows:
        table.insert_many(rows).on_conflict(
            conflict_target=[table.workload_instance, table.name], preserve=[table.position, table.json_definition]
        ).execute()
    names = [p.name for p in planned]
    table.delete().where((table.workload_instance == instance_id) & table.name.not_in(names)).execute()


def _union(*lists: Optional[Iterable]) -> list:
    seen: dict = {}
    for items in lists:
        for item in items or []:
            seen[json.dumps(item)] = item
    return [seen[key] for key in sorted(seen)]


# Health and events ------------------------------------------------------------------


def _report(cluster: Cluster, instance: WorkloadInstance, plan: _Plan, status: dict[str, Any]) -> None:
    """Record the live objects' health and events; requeue (TemporaryError) while it is worth looking again."""
    workloads, waiting = {}, []
    for planned in plan.objects:
        if planned.body["kind"] in _REPLICATED:
            ref = planned.ref
            live = cluster.find(ref["apiVersion"], ref["kind"], ref["name"], ref.get("namespace"))
            ready, desired, current = _readiness(live)
            workloads[planned.name] = {"ready": ready, "desired": desired}
            if not current or ready < desired:
                waiting.append(f"{planned.name} {ready}/{desired} ready")
    pods = [
        pod
        for namespace in plan.namespaces
        for pod in cluster.list("v1", "Pod", namespace=namespace, label_selector=f"{INSTANCE_LABEL}={instance.id}")
    ]
    broken = sorted(
        f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}: {why}" for pod, why in _broken(pods)
    )
    health = "Unhealthy" if broken else "Progressing" if waiting else "Healthy"
    _record_events(instance.id, _events_about(cluster, plan, pods))
    checks = int(status.get("health_checks") or 0)
    report = {
        "health": health,
        "namespace": plan.namespace,
        "workloads": workloads,
        "unhealthy_pods": broken,
        "attachments": {**plan.attached, "pending": plan.pending},
        "health_checks": checks + 1,
    }
    store.merge_status(WorkloadInstance, instance.id, report)
    if health == "Healthy" and not plan.pending:
        return
    since = _parse_time(status.get("health_since")) or utcnow()
    if (utcnow() - since).total_seconds() >= HEALTH_WINDOW:
        return  # stop looking: the status says how it was last seen
    store.write_status(
        WorkloadInstance, instance.id, generation=instance.generation, status={}, observed=False, reconciled=True
    )
    why = broken or waiting or [f"waiting for {what}" for what in plan.pending]
    raise TemporaryError(f"{health}: {'; '.join(why)}", delay=min(HEALTH_POLL_CEILING, HEALTH_POLL * 1.5**checks))


def _readiness(live: Optional[dict[str, Any]]) -> tuple[int, int, bool]:
    """(ready, desired, whether the status is about the current spec) of a Deployment, StatefulSet or DaemonSet."""
    if live is None:
        return 0, 1, False
    spec, status = live.get("spec") or {}, live.get("status") or {}
    if live.get("kind") == "DaemonSet":
        ready, desired = status.get("numberReady", 0), status.get("desiredNumberScheduled", 0)
    else:
        ready, desired = status.get("readyReplicas", 0), spec.get("replicas", 1)
    observed, generation = status.get("observedGeneration"), (live.get("metadata") or {}).get("generation")
    current = bool(status) and (observed is None or generation is None or observed >= generation)
    return int(ready or 0), int(desired or 0), current


def _broken(pods: list[dict[str, Any]]) -> Iterable[tuple[dict[str, Any], str]]:
    """(pod, reason) of every pod with a container crash looping or unable to start."""
    for pod in pods:
        status = pod.get("status") or {}
        for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            reason = ((container.get("state") or {}).get("waiting") or {}).get("reason")
            if reason in _BROKEN_POD_REASONS:
                yield pod, reason
                break


def _events_about(cluster: Cluster, plan: _Plan, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The namespaces' events whose object is one of the plan's or one of its pods, newest last."""
    about = {(p.ref.get("namespace"), p.body["kind"], p.body["metadata"]["name"]) for p in plan.objects}
    about |= {(pod["metadata"].get("namespace"), "Pod", pod["metadata"]["name"]) for pod in pods}
    found = []
    for namespace in plan.namespaces:
        for event in cluster.events(namespace):
            involved = event.get("involvedObject") or {}
            key = (involved.get("namespace") or namespace, involved.get("kind"), involved.get("name"))
            if key in about:
                found.append(event)
    found.sort(key=lambda event: _event_time(event) or dt.datetime.min.replace(tzinfo=dt.timezone.utc))
    return found[-MAX_EVENTS:]


@transactional
def _record_events(instance_id: Any, events: list[dict[str, Any]]) -> None:
    """One WorkloadEvent per (object, reason, message): new ones inserted, repeated ones' ``last_seen`` moved on."""
    if not events:
        return
    table = WorkloadEvent
    known = {
        (row.involved_object, row.reason, row.message): row
        for row in table.select().where(table.workload_instance == instance_id)
    }
    for event in events:
        involved = event.get("involvedObject") or {}
        namespace = involved.get("namespace") or (event.get("metadata") or {}).get("namespace")
        name = f"{namespace}/{involved.get('kind')}/{involved.get('name')}"
        key = (name, str(event.get("reason") or ""), str(event.get("message") or ""))
        seen = _event_time(event) or utcnow()
        row = known.get(key)
        if row is None:
            known[key] = table.create(
                workload_instance=instance_id,
                type=str(event.get("type") or "Normal"),
                reason=key[1],
                message=key[2],
                involved_object=name,
                last_seen=seen,
            )
        elif row.last_seen is None or seen > row.last_seen:
            table.update(last_seen=seen).where(table.id == row.id).execute()
            row.last_seen = seen


def _event_time(event: dict[str, Any]) -> Optional[dt.datetime]:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        parsed = _parse_time(event.get(key))
        if parsed is not None:
            return parsed
    return _parse_time((event.get("metadata") or {}).get("creationTimestamp"))


def _parse_time(text: Any) -> Optional[dt.datetime]:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


register(WorkloadInstance.kind, Reconciler(reconcile=reconcile_workload_instance, delete=delete_workload_instance))
