"""Kubernetes scenarios told once, run on the stand-in and, opt-in, on a real cluster.

A scenario drives the control loop (the PostgreSQL, NATS and worker its test
set up) against a *target*. :class:`StandIn` reads the stand-in of
tests/kube.py from its memory and plays the Deployment controller when a
scenario wants ready replicas. :class:`RealCluster` reads a real cluster
through the Kubernetes adapter, lets its controllers work, names every
instance with a suffix of its run, waits minutes rather than seconds, and
removes what the run made (:meth:`RealCluster.clean_up`).

The stand-in tests (tests/test_workload_instances.py, tests/test_gateways.py)
call a scenario, then check what only the stand-in can tell (its request log,
its write counts); tests/test_kubernetes_real.py calls the same scenarios on
the cluster of ``--kubeconfig``. ``python -m tests.kube_scenarios PATH``
serves a stand-in as if it were a cluster and writes its kubeconfig at PATH,
to run that path where no cluster is at hand.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import pytest
import yaml

from models import (
    DomainNameDefinition,
    GatewayDefinition,
    GatewayInstance,
    KubernetesRuntimeInstance,
    WorkloadDefinition,
    WorkloadInstance,
    WorkloadResourceInstance,
    store,
)
from tasks import reconcilers  # noqa: F401  (first: it imports the reconciler modules in an order that works)
from tasks.gateways import GATEWAY_LABEL
from tasks.kubernetes_adapter import (
    Cluster,
    Credentials,
    KubernetesError,
    KubernetesNotFound,
    KubernetesUnknownKind,
)
from tasks.support_services import COMPONENT_LABEL, COMPONENTS, RECORD_NAME, RECORD_NAMESPACE, Domain, Settings
from tasks.workload_instances import CREATED_FOR_LABEL, INSTANCE_LABEL
from workers.outbox_relay import publish_rows

from .kube import RESOURCES, KubeApi, runtime_for
from .reconciling import observed, wait_for

__all__ = [
    # Targets
    "StandIn",
    "RealCluster",
    # Workload scenarios
    "an_instance_deploys_its_documents_labelled",
    "reapplying_the_same_documents_writes_nothing",
    "a_document_that_leaves_the_definition_is_pruned",
    "deleting_an_instance_removes_everything",
    # Gateway scenario, in two acts
    "SharedGateways",
    "two_gateways_share_the_supporting_services",
    "the_supporting_services_go_with_the_last_gateway",
    # Documents and helpers
    "CONFIG_MAP",
    "DEPLOYMENT",
    "SERVICE",
    "WEB",
    "WEB_OBJECTS",
    "definition",
    "instance",
    "update",
    "rows",
    "namespace_of",
    "deploy",
    "healthy",
    "with_health",
    "progressing_and_reconciled",
    "create",
    "reconciled",
    "delete",
    "domain",
    "gateway_definition",
    "gateway",
    "record",
    "left_of",
    # A stand-in served as a cluster
    "stand_in_kubeconfig",
    "serve_as_a_cluster",
]

T = TypeVar("T")
#: (apiVersion, kind, namespace, name) of an object.
Ref = tuple[str, str, Optional[str], str]

CONFIG_MAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-settings
data:
  colour: blue
"""
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx:1.27
"""
SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - port: 80
"""
WEB = "---\n".join([CONFIG_MAP, DEPLOYMENT, SERVICE])
#: (apiVersion, kind, name) of WEB's objects.
WEB_OBJECTS = [("v1", "ConfigMap", "web-settings"), ("apps/v1", "Deployment", "web"), ("v1", "Service", "web")]
#: The domain of the gateway scenario.
EXAMPLE = Domain("example.com", admin_email="admin@example.com")
CONTROLLER: Ref = ("apps/v1", "Deployment", "ingress-nginx", "ingress-nginx-controller")
INGRESS = ("networking.k8s.io/v1", "Ingress")


# Targets ----------------------------------------------------------------------------------------


class StandIn:
    """The stand-in as a scenario's target: read from its memory; what a real cluster finishes later, it has done."""

    #: How long (s) a scenario waits for the control loop.
    timeout = 30.0

    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube

    def name(self, base: str) -> str:
        """The name of an instance the scenario makes: the stand-in is the test's alone, so ``base``."""
        return base

    def runtime(self, broker) -> KubernetesRuntimeInstance:
        """A runtime reaching the stand-in, marked reconciled."""
        return runtime_for(self.kube.url)

    def live(self, api_version: str, kind: str, namespace: Optional[str], name: str) -> Optional[dict]:
        return self.kube.live(api_version, kind, namespace, name)

    def labelled(self, api_version: str, kind: str, selector: str) -> list[str]:
        """The live objects matching ``key=value`` or ``key`` (``namespace/name`` when namespaced)."""
        if (api_version, kind) not in RESOURCES:
            return []
        key, equals, value = selector.partition("=")
        found = []
        for name in self.kube.names(api_version, kind):
            namespace, _, short = name.rpartition("/")
            live = self.kube.live(api_version, kind, namespace or None, short) or {}
            labels = (live.get("metadata") or {}).get("labels") or {}
            if key in labels and (not equals or labels[key] == value):
                found.append(name)
        return found

    def write_marks(self, refs: list[Ref]) -> dict[Ref, Any]:
        """A mark per object that changes whenever it is written: how many versions the stand-in keeps of it."""
        return {ref: self.kube.versions(*ref) for ref in refs}

    def ready(self, namespace: str, name: str = "web", replicas: int = 2) -> None:
        """What the Deployment controller would report once every replica is ready."""
        status = {"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas}
        self.kube.set_status("apps/v1", "Deployment", namespace, name, status)

    def wait_for(self, predicate: Callable[[], Optional[T]]) -> T:
        return wait_for(predicate, self.timeout)

    def settled(self, predicate: Callable[[], Optional[T]]) -> T:
        """``predicate()``, which must hold now: the stand-in deletes at once, namespaces and all."""
        value = predicate()
        assert value, "not so on the stand-in"
        return value


class RealCluster:
    """A real cluster as a scenario's target, reached with a kubeconfig; :meth:`clean_up` removes what its run made.

    Its instances are named ``<name>-<suffix>`` (their namespaces
    ``<name>-<suffix>-<id prefix>``), the suffix random per run.
    """

    #: How long (s) a scenario waits for the control loop and the cluster (pulling images, ending namespaces).
    timeout = 300.0
    #: How long (s) an object must stay unwritten to count as settled (its controllers done with its status).
    steady = 5.0

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        self.suffix = uuid.uuid4().hex[:6]
        self.cluster = Cluster(Credentials(kubeconfig=kubeconfig))
        self._installs_supporting_services = False

    def name(self, base: str) -> str:
        return f"{base}-{self.suffix}"

    def runtime(self, broker) -> KubernetesRuntimeInstance:
        """A runtime reaching the cluster with the kubeconfig, reconciled by its reconciler."""
        runtime = runtime_for(
            "",
            name=self.name("cluster"),
            kubeconfig=self.kubeconfig,
            reconciled=False,
            publish=lambda outbox: publish_rows(broker, outbox),
        )
        done = self.wait_for(lambda: observed(KubernetesRuntimeInstance, runtime.id))
        assert done.status["phase"] == "Reconciled" and done.status["node_count"] >= 1, done.status
        return done

    def live(self, api_version: str, kind: str, namespace: Optional[str], name: str) -> Optional[dict]:
        try:
            return self.cluster.find(api_version, kind, name, namespace)
        except KubernetesUnknownKind:  # its CRD is gone
            return None

    def labelled(self, api_version: str, kind: str, selector: str) -> list[str]:
        """The live objects matching the label selector, in every namespace (``namespace/name`` when namespaced)."""
        try:
            found = self.cluster.list(api_version, kind, label_selector=selector)
        except (KubernetesUnknownKind, KubernetesNotFound):  # its CRD is gone
            return []
        return sorted(_name_of(obj) for obj in found)

    def write_marks(self, refs: list[Ref]) -> dict[Ref, Any]:
        """Each object's resourceVersion, once none changed for :attr:`steady` seconds (controllers write statuses)."""

        def read() -> dict[Ref, Any]:
            return {ref: ((self.live(*ref) or {}).get("metadata") or {}).get("resourceVersion") for ref in refs}

        deadline = time.monotonic() + self.timeout
        marks = read()
        while True:
            time.sleep(self.steady)
            again = read()
            if again == marks or time.monotonic() > deadline:
                return again
            marks = again

    def ready(self, namespace: str, name: str = "web", replicas: int = 2) -> None:
        """Nothing: the cluster's Deployment controller makes the replicas ready."""

    def wait_for(self, predicate: Callable[[], Optional[T]]) -> T:
        return wait_for(predicate, self.timeout)

    def settled(self, predicate: Callable[[], Optional[T]]) -> T:
        """``predicate()`` once it holds: a cluster finishes deletions later (namespaces end, finalizers run)."""
        return wait_for(predicate, self.timeout)

    def claim_supporting_services(self) -> None:
        """Skip the test unless the cluster has none of the supporting services a gateway installs, nor threeport's
        record of them: the run then installed what of them :meth:`clean_up` finds, and removes it."""
        present = [_describe(ref) for ref in _supporting_refs() if self.live(*ref) is not None]
        if present:
            found = ", ".join(present[:3])
            pytest.skip(f"the cluster has {found} already: the gateway scenario would replace and then remove it")
        self._installs_supporting_services = True

    def clean_up(self) -> None:
        """Delete what this run made (every deletion is tried), and wait until it is gone."""
        try:
            made, failed = self._made(), []
            for api_version, kind, namespace, name in made:
                try:
                    self.cluster.delete(api_version, kind, name, namespace)
                except KubernetesUnknownKind:  # its CRD went first
                    pass
                except KubernetesError as exc:
                    failed.append(exc)
            assert not failed, f"could not delete what the test made: {failed}"
            try:
                wait_for(lambda: all(self.live(*ref) is None for ref in made), self.timeout)
            except AssertionError:
                left = [_describe(ref) for ref in made if self.live(*ref) is not None]
                raise AssertionError(f"still there {self.timeout:.0f} s after the test deleted them: {left}") from None
        finally:
            self.cluster.close()

    def _made(self) -> list[Ref]:
        """Its instances' namespaces; the supporting services and their record when it installed them (last first)."""
        made: list[Ref] = [
            ("v1", "Namespace", None, obj["metadata"]["name"])
            for obj in self.cluster.list("v1", "Namespace", label_selector=CREATED_FOR_LABEL)
            if f"-{self.suffix}-" in obj["metadata"]["name"]
        ]
        if not self._installs_supporting_services:
            return made
        for component in ("cert-manager", "ingress"):
            selector = f"{COMPONENT_LABEL}={component}"
            for api_version, kind in reversed(_kinds_of(component)):
                made += [_ref_of(api_version, kind, name) for name in self.labelled(api_version, kind, selector)]
        return made + [("v1", "ConfigMap", RECORD_NAMESPACE, RECORD_NAME), ("v1", "Namespace", None, RECORD_NAMESPACE)]


def _name_of(obj: dict[str, Any]) -> str:
    metadata = obj["metadata"]
    return f"{metadata['namespace']}/{metadata['name']}" if metadata.get("namespace") else metadata["name"]


def _ref_of(api_version: str, kind: str, name: str) -> Ref:
    """The ref of a name as :meth:`labelled` gives it."""
    namespace, _, short = name.rpartition("/")
    return api_version, kind, namespace or None, short


def _describe(ref: Ref) -> str:
    _, kind, namespace, name = ref
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def _objects_of(component: str) -> list[dict[str, Any]]:
    """The component's manifests, with the scenario's domain."""
    return COMPONENTS[component].objects(Settings(domains=(EXAMPLE,)))


def _kinds_of(component: str) -> list[tuple[str, str]]:
    """(apiVersion, kind) of the component's objects, in apply order."""
    return list(dict.fromkeys((obj["apiVersion"], obj["kind"]) for obj in _objects_of(component)))


def _supporting_refs() -> list[Ref]:
    """The objects the gateway scenario installs under fixed names, and threeport's record of them."""
    refs = [
        (obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        for component in ("ingress", "cert-manager")
        for obj in _objects_of(component)
    ]
    return refs + [("v1", "Namespace", None, RECORD_NAMESPACE)]


# Workload helpers -------------------------------------------------------------------------------


def definition(broker, yaml: str = WEB, name: str = "web") -> WorkloadDefinition:
    """A WorkloadDefinition, reconciled by its own reconciler (its documents recorded)."""
    written = store.create(WorkloadDefinition, {"name": name, "yaml_document": yaml})
    publish_rows(broker, written.outbox)
    return wait_for(lambda: observed(WorkloadDefinition, written.obj.id))


def instance(broker, workload: WorkloadDefinition, runtime=None, name: str = "web", publish=True) -> WorkloadInstance:
    fields = {"name": name, "workload_definition_id": workload.id}
    if runtime is not None:
        fields["kubernetes_runtime_instance_id"] = runtime.id
    written = store.create(WorkloadInstance, fields)
    if publish:
        publish_rows(broker, written.outbox)
    return written.obj


def update(broker, model, obj_id, fields) -> None:
    publish_rows(broker, store.update(model, obj_id, fields).outbox)


def rows(instance_id) -> list[str]:
    table = WorkloadResourceInstance
    query = table.select().where(table.workload_instance == instance_id).order_by(table.position)
    return [row.name for row in query]


def namespace_of(instance_id, timeout: float = 30.0) -> str:
    return wait_for(lambda: store.get(WorkloadInstance, instance_id).status.get("namespace"), timeout)


def healthy(instance_id) -> Optional[WorkloadInstance]:
    current = observed(WorkloadInstance, instance_id)
    return current if current is not None and current.status.get("health") == "Healthy" else None


def with_health(instance_id, health: str) -> Optional[WorkloadInstance]:
    current = store.get(WorkloadInstance, instance_id)
    return current if current.status.get("health") == health else None


def progressing_and_reconciled(instance_id) -> Optional[WorkloadInstance]:
    current = with_health(instance_id, "Progressing")
    return current if current is not None and current.reconciled and "ready" in current.status["message"] else None


def deploy(target, broker, runtime, *, name: str = "web", yaml: str = WEB) -> WorkloadInstance:
    """A healthy instance of ``yaml`` (its Deployment named 'web') on ``runtime``."""
    obj = instance(broker, definition(broker, yaml, name=name), runtime, name=target.name(name))
    namespace = namespace_of(obj.id, target.timeout)
    target.wait_for(lambda: target.live("apps/v1", "Deployment", namespace, "web"))
    target.ready(namespace)
    return target.wait_for(lambda: healthy(obj.id))


# Workload scenarios -----------------------------------------------------------------------------


def an_instance_deploys_its_documents_labelled(target, broker) -> WorkloadInstance:
    """Apply: every document lands in the instance's namespace, labelled, with a row each; Healthy once ready."""
    # Given a runtime and a definition of three documents without a namespace
    runtime = target.runtime(broker)
    workload = definition(broker)

    # When an instance of it is created
    obj = instance(broker, workload, runtime, name=target.name("web"))

    # Then its namespace is made, every document is applied there with the instance's label
    namespace = namespace_of(obj.id, target.timeout)
    assert namespace == f"{obj.name}-{obj.id.hex[:8]}"
    target.wait_for(lambda: target.live("v1", "Service", namespace, "web"))
    assert target.live("v1", "Namespace", None, namespace) is not None
    for api_version, kind, name in WEB_OBJECTS[:2]:
        live = target.live(api_version, kind, namespace, name)
        assert live["metadata"]["labels"][INSTANCE_LABEL] == str(obj.id)
        assert live["metadata"]["annotations"]["threeport.io/workload-instance-name"] == obj.name
    deployment = target.live("apps/v1", "Deployment", namespace, "web")
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"app": "web", INSTANCE_LABEL: str(obj.id)}

    # And one WorkloadResourceInstance per document
    expected = [f"{namespace}/ConfigMap/web-settings", f"{namespace}/Deployment/web", f"{namespace}/Service/web"]
    target.wait_for(lambda: rows(obj.id) == expected)

    # And while the Deployment has no ready replica it is reconciled (dependents may go on) but Progressing
    progressing = target.wait_for(lambda: progressing_and_reconciled(obj.id))
    assert progressing.observed_generation == 0 and "0/2 ready" in progressing.status["message"]

    # When its replicas are ready, then it is Healthy and its generation observed
    target.ready(namespace)
    done = target.wait_for(lambda: healthy(obj.id))
    assert done.status["phase"] == "Reconciled" and done.status["workloads"] == {
        f"{namespace}/Deployment/web": {"ready": 2, "desired": 2}
    }
    return done


def reapplying_the_same_documents_writes_nothing(target, broker) -> WorkloadInstance:
    """Re-apply: a new generation with the same documents writes nothing in the cluster."""
    # Given a deployed, healthy instance
    obj = deploy(target, broker, target.runtime(broker))
    refs = [(api_version, kind, obj.status["namespace"], name) for api_version, kind, name in WEB_OBJECTS]
    marks = target.write_marks(refs)
    count = len(rows(obj.id))

    # When it gets a new generation with the very same documents (another definition, same YAML)
    update(broker, WorkloadInstance, obj.id, {"workload_definition_id": definition(broker, name="web-copy").id})

    # Then it is reconciled again, and nothing in the cluster was written, nor any row added
    target.wait_for(lambda: healthy(obj.id) and healthy(obj.id).generation == 2)
    assert target.write_marks(refs) == marks
    assert len(rows(obj.id)) == count
    return obj


def a_document_that_leaves_the_definition_is_pruned(target, broker) -> WorkloadInstance:
    """Prune: what left the definition is deleted from the cluster and from the rows; the rest stays."""
    # Given a deployed instance of the three documents
    obj = deploy(target, broker, target.runtime(broker))
    namespace = obj.status["namespace"]

    # When it moves to a definition without the ConfigMap
    smaller = definition(broker, "---\n".join([DEPLOYMENT, SERVICE]), name="web-smaller")
    update(broker, WorkloadInstance, obj.id, {"workload_definition_id": smaller.id})

    # Then the ConfigMap is deleted from the cluster and from the rows; the others stay
    target.wait_for(lambda: target.live("v1", "ConfigMap", namespace, "web-settings") is None)
    target.wait_for(lambda: healthy(obj.id) and healthy(obj.id).generation == 2)
    assert rows(obj.id) == [f"{namespace}/Deployment/web", f"{namespace}/Service/web"]
    assert target.live("apps/v1", "Deployment", namespace, "web") is not None
    assert target.labelled("v1", "ConfigMap", f"{INSTANCE_LABEL}={obj.id}") == []
    return obj


def deleting_an_instance_removes_everything(target, broker) -> WorkloadInstance:
    """Delete: the row goes once everything applied and the namespace made for it are deleted."""
    # Given a deployed instance
    obj = deploy(target, broker, target.runtime(broker))
    namespace = obj.status["namespace"]

    # When its deletion is scheduled
    publish_rows(broker, store.schedule_deletion(WorkloadInstance, obj.id).outbox)

    # Then its row goes (confirmed), with its resource rows
    target.wait_for(lambda: WorkloadInstance.get_or_none(WorkloadInstance.id == obj.id) is None)
    assert rows(obj.id) == []

    # And nothing of it is left in the cluster: its objects, and the namespace it made
    target.settled(lambda: target.live("v1", "Namespace", None, namespace) is None)
    selector = f"{INSTANCE_LABEL}={obj.id}"
    target.settled(lambda: all(target.labelled(v, kind, selector) == [] for v, kind, _ in WEB_OBJECTS))
    return obj


# Gateway helpers --------------------------------------------------------------------------------


def create(broker, model, fields: dict[str, Any]):
    """An object, published to its reconciler."""
    written = store.create(model, fields)
    publish_rows(broker, written.outbox)
    return written.obj


def reconciled(broker, model, fields: dict[str, Any]):
    """An object, once its reconciler has observed it."""
    obj = create(broker, model, fields)
    return wait_for(lambda: observed(model, obj.id))


def delete(broker, model, obj_id, timeout: float = 30.0) -> None:
    """Schedule the object's deletion and wait until its reconciler has confirmed it."""
    publish_rows(broker, store.schedule_deletion(model, obj_id).outbox)
    wait_for(lambda: model.get_or_none(model.id == obj_id) is None, timeout)


def domain(broker, name: str = "example", domain_name: str = "example.com", zone: str = "Public"):
    fields = {"name": name, "domain": domain_name, "zone": zone, "admin_email": f"admin@{domain_name}"}
    return reconciled(broker, DomainNameDefinition, fields)


def gateway_definition(broker, name: str = "web", **fields: Any) -> GatewayDefinition:
    fields.setdefault("http_ports", [{"port": 80, "path": "/"}])
    return reconciled(broker, GatewayDefinition, {"name": name, **fields})


def gateway(
    broker, definition: GatewayDefinition, workload: WorkloadInstance, name: str = "web", timeout: float = 30.0
) -> GatewayInstance:
    """A GatewayInstance, once reconciled."""
    fields = {"name": name, "gateway_definition_id": definition.id, "workload_instance_id": workload.id}
    obj = create(broker, GatewayInstance, fields)
    done = wait_for(lambda: observed(GatewayInstance, obj.id), timeout)
    assert done.status["phase"] == "Reconciled", done.status
    return done


def record(cluster) -> dict[str, list[str]]:
    """The cluster's record of which workload instances need which supporting service (``cluster``: the stand-in or
    a target)."""
    live = cluster.live("v1", "ConfigMap", RECORD_NAMESPACE, RECORD_NAME) or {}
    return {component: json.loads(ids) for component, ids in (live.get("data") or {}).items()}


def left_of(target, component: str) -> list[str]:
    """Every live object labelled as part of ``component``, of the kinds it is made of."""
    return [
        f"{kind}/{name}"
        for api_version, kind in _kinds_of(component)
        for name in target.labelled(api_version, kind, f"{COMPONENT_LABEL}={component}")
    ]


# The gateway scenario ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SharedGateways:
    """Two workloads on one cluster, each with a TLS gateway: what the first act leaves for the second."""

    shop: WorkloadInstance
    blog: WorkloadInstance
    first: GatewayInstance
    second: GatewayInstance


def two_gateways_share_the_supporting_services(target, broker) -> SharedGateways:
    """Act one: the ingress controller and cert-manager are installed once for two workloads' gateways."""
    # Given two workloads on one cluster, and a TLS gateway definition under a domain
    runtime = target.runtime(broker)
    shop, blog = deploy(target, broker, runtime, name="shop"), deploy(target, broker, runtime, name="blog")
    example = domain(broker, domain_name=EXAMPLE.name)
    ports = [{"port": 443, "tls_enabled": True}]
    definition = gateway_definition(broker, http_ports=ports, sub_domain="www", domain_name_definition_id=example.id)

    # When each gets a gateway
    first = gateway(broker, definition, shop, "shop", target.timeout)
    installed = target.live(*CONTROLLER)
    second = gateway(broker, definition, blog, "blog", target.timeout)

    # Then both workloads are users of the ingress controller and cert-manager, installed once, each with an Ingress
    users = sorted([str(shop.id), str(blog.id)])
    assert record(target) == {"ingress": users, "cert-manager": users}
    controller = target.live(*CONTROLLER)
    assert controller["metadata"]["uid"] == installed["metadata"]["uid"] and controller["metadata"]["generation"] == 1
    assert target.labelled(*INGRESS, GATEWAY_LABEL) == sorted(
        [f"{shop.status['namespace']}/shop-{first.id.hex[:8]}", f"{blog.status['namespace']}/blog-{second.id.hex[:8]}"]
    )
    return SharedGateways(shop, blog, first, second)


def the_supporting_services_go_with_the_last_gateway(target, broker, shared: SharedGateways) -> None:
    """Act two: the supporting services stay while a gateway needs them, and go with the last."""
    blog_ingress = f"{shared.blog.status['namespace']}/blog-{shared.second.id.hex[:8]}"

    # When the first gateway is deleted, then its Ingress goes and the supporting services stay
    delete(broker, GatewayInstance, shared.first.id, target.timeout)
    target.settled(lambda: target.labelled(*INGRESS, GATEWAY_LABEL) == [blog_ingress])
    assert record(target) == {"ingress": [str(shared.blog.id)], "cert-manager": [str(shared.blog.id)]}
    assert target.live(*CONTROLLER) is not None
    assert target.live("cert-manager.io/v1", "ClusterIssuer", None, "letsencrypt-production-example.com") is not None

    # When the last one is deleted, then its Ingress and everything labelled with the supporting services go
    delete(broker, GatewayInstance, shared.second.id, target.timeout)
    target.settled(lambda: target.labelled(*INGRESS, GATEWAY_LABEL) == [])
    assert record(target) == {}
    target.settled(lambda: left_of(target, "ingress") == [] and left_of(target, "cert-manager") == [])


# A stand-in served as a cluster -----------------------------------------------------------------


def stand_in_kubeconfig(url: str, token: str) -> str:
    """A kubeconfig reaching the stand-in at ``url`` with a bearer token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stand-in", "cluster": {"server": url}}],
        "users": [{"name": "threeport", "user": {"token": token}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "threeport"}}],
        "current-context": "stand-in",
    }
    return yaml.safe_dump(config)


def serve_as_a_cluster(kubeconfig_path: str, *, ready_after: float = 2.0) -> None:
    """Serve a stand-in on loopback as if it were a cluster, its kubeconfig written at ``kubeconfig_path``, until
    interrupted (SIGINT, SIGTERM); then print what is left in it besides what it started with.

    It plays the Deployment controller: a Deployment reports every replica
    ready ``ready_after`` seconds after it is first seen (pods take a moment
    to start). It keeps everything between tests, as a cluster would, so what
    is left at the end is what the tests did not clean up.
    """
    api = KubeApi().start()
    token = uuid.uuid4().hex
    api.require_token(token)
    with open(kubeconfig_path, "w") as file:
        file.write(stand_in_kubeconfig(api.url, token))
    print(f"stand-in serving at {api.url}; kubeconfig written to {kubeconfig_path}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        _play_the_deployment_controller(api, stop, ready_after)
    finally:
        print("left behind: " + (", ".join(_leftovers(api)) or "nothing"), flush=True)
        api.stop()


def _play_the_deployment_controller(api: KubeApi, stop: threading.Event, ready_after: float) -> None:
    first_seen: dict[str, float] = {}
    while not stop.wait(0.2):
        for name in api.names("apps/v1", "Deployment"):
            namespace, _, short = name.rpartition("/")
            live = api.live("apps/v1", "Deployment", namespace, short)
            if live is None:
                continue
            since = first_seen.setdefault(live["metadata"]["uid"], time.monotonic())
            if time.monotonic() - since < ready_after:
                continue
            replicas = live["spec"].get("replicas", 1)
            status = {"observedGeneration": live["metadata"]["generation"], "replicas": replicas}
            status |= {"readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas}
            if live.get("status") != status:
                try:
                    api.set_status("apps/v1", "Deployment", namespace, short, status)
                except KeyError:  # deleted meanwhile
                    pass


def _leftovers(api: KubeApi) -> list[str]:
    """Every live object but the namespaces and nodes the stand-in starts with, and events."""
    initial = {("Namespace", "default"), ("Namespace", "kube-system")}
    return [
        f"{kind} {name}"
        for api_version, kind in RESOURCES
        if kind not in ("Node", "Event")
        for name in api.names(api_version, kind)
        if (kind, name) not in initial
    ]


if __name__ == "__main__":
    serve_as_a_cluster(sys.argv[1])
