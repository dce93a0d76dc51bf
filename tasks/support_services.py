"""Supporting services: what a cluster runs so that workloads can be reached (ingress, TLS, DNS), installed on demand.

:data:`COMPONENTS` (in :mod:`tasks.support_components`) pins every
component in one place: its version and the manifests it is made of, a
function of :class:`Settings` (the domains in use on the cluster, say). :func:`need` makes a workload instance one of a
component's users on a cluster and applies the component (server-side apply,
every object labelled :data:`COMPONENT_LABEL` = the component) when it is not
installed yet or its manifests changed, deleting the objects that left them;
:func:`release` drops the user and, after the last one, deletes everything
labelled with the component, in reverse order.

Which workload instances need which component is kept in the cluster, so any
worker reads the same truth: the ConfigMap :data:`RECORD_NAME` in
:data:`RECORD_NAMESPACE` (data: component → JSON list of workload instance
ids; its annotation :data:`INSTALLED_ANNOTATION` says what is installed: the
version, a digest of the manifests and the objects applied). Every change to
it is a compare-and-set on its ``resourceVersion``; a worker that applied or
removed objects and then finds the record changed under it looks again and
applies again, so the last writer leaves the cluster as the record says.
Within a process, changes to one cluster's record are serialized.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from .errors import TemporaryError
from .kubernetes_adapter import Cluster, KubernetesConflict, KubernetesUnavailable, KubernetesUnknownKind, identity
from .support_components import (
    ACME_SERVERS,
    COMPONENT_LABEL,
    COMPONENTS,
    INGRESS_CLASS,
    INGRESS_CONTROLLER_LABELS,
    INGRESS_NAMESPACE,
    MANAGED_LABELS,
    TCP_SERVICES,
    Component,
    Domain,
    Settings,
    issuer_name,
)

__all__ = [
    # Components
    "COMPONENTS",
    "Component",
    "Settings",
    "Domain",
    # Users and installation
    "need",
    "release",
    # Names
    "COMPONENT_LABEL",
    "RECORD_NAMESPACE",
    "RECORD_NAME",
    "INSTALLED_ANNOTATION",
    "INGRESS_CLASS",
    "INGRESS_NAMESPACE",
    "INGRESS_CONTROLLER_LABELS",
    "TCP_SERVICES",
    "ACME_SERVERS",
    "issuer_name",
    # ConfigMaps written by compare-and-set
    "edit_config_map",
]

#: Where the record of the components' users lives.
RECORD_NAMESPACE = "threeport-system"
RECORD_NAME = "threeport-support-services"
#: The record's annotation saying what is installed (JSON: component → version, digest, objects).
INSTALLED_ANNOTATION = "threeport.io/installed"
#: The prefix of the annotations threeport writes (others' are left alone).
_OURS = "threeport.io/"
#: Compare-and-set attempts on a ConfigMap before giving up for now (TemporaryError).
CAS_ATTEMPTS = 8


# Users and installation ------------------------------------------------------------------


def need(cluster: Cluster, component: str, user: str, *, settings: Callable[[], Settings] = Settings) -> bool:
    """Make ``user`` (a workload instance id) a user of ``component`` on the cluster, with the component installed
    as ``settings()`` says: whether anything was applied.

    Nothing is written when the user is recorded already and the component
    is installed with the same manifests.
    """
    return _declare(cluster, _component(component), user, needed=True, settings=settings)


def release(cluster: Cluster, component: str, user: str, *, settings: Callable[[], Settings] = Settings) -> bool:
    """Drop ``user`` from the component's users: whether anything was applied or removed.

    After the last user everything labelled with the component goes (in
    reverse order); while others remain, the component is applied again if
    ``settings()`` (which no longer counts the user) changes its manifests.
    """
    return _declare(cluster, _component(component), user, needed=False, settings=settings)


def _component(name: str) -> Component:
    try:
        return COMPONENTS[name]
    except KeyError:
        raise ValueError(f"no supporting service {name!r}: one of {sorted(COMPONENTS)}") from None


def _declare(
    cluster: Cluster, component: Component, user: str, *, needed: bool, settings: Callable[[], Settings]
) -> bool:
    """Record the user change and make the cluster match the record.

    Every step is a compare-and-set on the record: what is about to be
    applied is recorded (``pending``) before it is applied, a removal is
    marked (``removing``) before it starts, and when the record changed
    under a step the whole decision is taken again, acting again.
    """
    acted = False  # once acted, the record's word is not enough: act again after a lost compare-and-set
    with _serialized(cluster):
        for _ in range(CAS_ATTEMPTS):
            record = _read_record(cluster)
            data = dict(record.data)
            installed = json.loads(record.annotations.get(INSTALLED_ANNOTATION) or "{}")
            current = set(json.loads(data.get(component.name) or "[]"))
            wanted = current | {user} if needed else current - {user}
            if wanted:
                data[component.name] = json.dumps(sorted(wanted))
            else:
                data.pop(component.name, None)
            entry = installed.get(component.name)
            if not wanted:
                if entry is None:  # nothing was installed (or recorded as being installed)
                    if record.write(cluster, data=data, annotations=record.annotations):
                        return acted
                    continue
                if not entry.get("removing"):
                    installed[component.name] = {**entry, "removing": True}
                    if not record.write(cluster, data=data, annotations=_installed(installed)):
                        continue
                _uninstall(cluster, component, entry)
                acted = True
                installed.pop(component.name)
                if record.write(cluster, data=data, annotations=_installed(installed)):
                    return acted
                continue  # the record changed while removing: someone may need the component again
            objects = component.objects(settings())
            digest = _digest(objects)
            current_entry = entry or {}
            up_to_date = current_entry.get("digest") == digest and not current_entry.get("removing")
            if not acted and up_to_date and _running(cluster, component):
                if record.write(cluster, data=data, annotations=record.annotations):
                    return acted
                continue
            refs = [_ref(obj) for obj in objects]
            known = {_identity(ref) for ref in refs}
            leftovers = [ref for ref in current_entry.get("objects") or [] if _identity(ref) not in known]
            installed[component.name] = {"version": component.version, "digest": None, "objects": refs + leftovers}
            if not record.write(cluster, data=data, annotations=_installed(installed)):
                continue
            _install(cluster, component, objects, previous=leftovers)
            acted = True
            installed[component.name] = {"version": component.version, "digest": digest, "objects": refs}
            if record.write(cluster, data=data, annotations=_installed(installed)):
                return acted
    raise TemporaryError(f"the record of supporting services at {cluster.endpoint} keeps changing: trying again")


def _running(cluster: Cluster, component: Component) -> bool:
    """Whether the object that runs the component is there."""
    api_version, kind, namespace, name = component.probe
    return cluster.find(api_version, kind, name, namespace) is not None


def _install(
    cluster: Cluster, component: Component, objects: list[dict[str, Any]], *, previous: list[dict[str, Any]]
) -> None:
    """Apply the objects in order, then delete the ``previous`` ones (applied before, no longer wanted)."""
    for obj in objects:
        try:
            cluster.apply(obj)
        except KubernetesUnknownKind as exc:
            if obj["apiVersion"] not in component.custom_api_versions:
                raise
            raise TemporaryError(
                f"waiting for the cluster to serve {obj['kind']} ({component.name}'s CRDs were just applied)", delay=5.0
            ) from exc
    for ref in reversed(previous):
        _delete(cluster, ref)


def _uninstall(cluster: Cluster, component: Component, entry: Optional[dict[str, Any]]) -> None:
    """Delete whatever else carries the component's label, then the objects it applied, in reverse order."""
    refs = list((entry or {}).get("objects") or [])
    kinds = list(dict.fromkeys((ref["apiVersion"], ref["kind"]) for ref in refs))
    kinds += [kind for kind in dict.fromkeys(_kind(obj) for obj in component.objects(Settings())) if kind not in kinds]
    recorded = {_identity(ref) for ref in refs}
    for api_version, kind in reversed(kinds):
        try:
            labelled = cluster.list(api_version, kind, label_selector=f"{COMPONENT_LABEL}={component.name}")
        except KubernetesUnknownKind:
            continue  # its CRD is gone: none can be left
        for obj in labelled:
            if identity(obj) not in recorded:
                _delete(cluster, _ref(obj))
    for ref in reversed(refs):
        _delete(cluster, ref)


def _delete(cluster: Cluster, ref: dict[str, Any]) -> None:
    try:
        cluster.delete(ref["apiVersion"], ref["kind"], ref["name"], ref.get("namespace"))
    except KubernetesUnknownKind:
        pass  # the cluster serves the kind no more: nothing of it is left


def _ref(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj["metadata"]
    ref = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": metadata["name"]}
    return ref | ({"namespace": metadata["namespace"]} if metadata.get("namespace") else {})


def _identity(ref: dict[str, Any]) -> str:
    return identity({"kind": ref["kind"], "metadata": ref})


def _kind(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["apiVersion"], obj["kind"]


def _digest(objects: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()


def _installed(installed: dict[str, Any]) -> dict[str, str]:
    return {INSTALLED_ANNOTATION: json.dumps(installed, sort_keys=True)} if installed else {}


def _read_record(cluster: Cluster) -> "_VersionedConfigMap":
    cluster.ensure_namespace(RECORD_NAMESPACE, labels=MANAGED_LABELS)
    return _VersionedConfigMap.read(cluster, namespace=RECORD_NAMESPACE, name=RECORD_NAME, labels=MANAGED_LABELS)


_cluster_locks: dict[str, threading.Lock] = {}
_cluster_locks_guard = threading.Lock()


@contextlib.contextmanager
def _serialized(cluster: Cluster) -> Iterator[None]:
    """Hold this process's lock of the cluster: its threads take turns at the record (other processes conflict)."""
    with _cluster_locks_guard:
        lock = _cluster_locks.setdefault(cluster.endpoint, threading.Lock())
    with lock:
        yield


# ConfigMaps written by compare-and-set ---------------------------------------------------------


@dataclass
class _VersionedConfigMap:
    """A ConfigMap as read, written back only if nobody wrote it since (a precondition on its resourceVersion)."""

    namespace: str
    name: str
    labels: dict[str, str]
    data: dict[str, str]
    annotations: dict[str, str]
    version: Optional[str] = field(default=None)

    @classmethod
    def read(
        cls, cluster: Cluster, *, namespace: str, name: str, labels: dict[str, str], create: bool = True
    ) -> "_VersionedConfigMap":
        """The ConfigMap, made empty first when it is missing and ``create`` (its namespace must exist)."""
        live = cluster.find("v1", "ConfigMap", name, namespace)
        if live is None and create:
            # Made empty: fields set by a create would belong to another field manager, and outlive our applies.
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}}
            body["metadata"]["labels"] = labels
            try:
                live = cluster.create(body)
            except KubernetesConflict:  # made meanwhile by another worker
                live = cluster.get("v1", "ConfigMap", name, namespace)
        metadata = (live or {}).get("metadata") or {}
        return cls(
            namespace=namespace,
            name=name,
            labels=labels,
            data=dict((live or {}).get("data") or {}),
            annotations={k: v for k, v in (metadata.get("annotations") or {}).items() if k.startswith(_OURS)},
            version=metadata.get("resourceVersion"),
        )

    def write(self, cluster: Cluster, *, data: dict[str, str], annotations: dict[str, str]) -> bool:
        """Apply ``data`` and ``annotations`` if the ConfigMap is still at the version read: whether it was.

        Nothing is sent when nothing changes.
        """
        if data == self.data and annotations == self.annotations:
            return True
        metadata = {"name": self.name, "namespace": self.namespace, "labels": self.labels}
        metadata |= {"annotations": annotations, "resourceVersion": self.version}
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        try:
            live = cluster.apply(body)
        except KubernetesUnavailable as exc:
            if exc.status == 409:  # written meanwhile
                return False
            raise
        self.data, self.annotations = dict(data), dict(annotations)
        self.version = (live.get("metadata") or {}).get("resourceVersion")
        return True


def edit_config_map(
    cluster: Cluster,
    *,
    namespace: str,
    name: str,
    edit: Callable[[dict[str, str]], dict[str, str]],
    labels: Optional[dict[str, str]] = None,
    create: bool = True,
) -> dict[str, str]:
    """Replace the ConfigMap's data with ``edit(data)`` by compare-and-set (again on a conflict): the data written.

    A missing ConfigMap is made (``create``: its namespace must exist) or left missing.
    """
    for _ in range(CAS_ATTEMPTS):
        config_map = _VersionedConfigMap.read(
            cluster, namespace=namespace, name=name, labels={**MANAGED_LABELS, **(labels or {})}, create=create
        )
        if config_map.version is None:
            return {}
        data = edit(dict(config_map.data))
        if config_map.write(cluster, data=data, annotations=config_map.annotations):
            return data
    raise TemporaryError(f"ConfigMap {namespace}/{name} at {cluster.endpoint} keeps changing: trying again")
