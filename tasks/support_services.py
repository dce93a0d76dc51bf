"""Supporting services: what a cluster runs so that workloads can be reached (ingress, TLS, DNS), installed on demand.

:data:`COMPONENTS` pins every component in one place: its version and the
manifests it is made of, a function of :class:`Settings` (the domains in use
on the cluster, say). :func:`need` makes a workload instance one of a
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
import copy
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from .errors import TemporaryError
from .kubernetes_adapter import Cluster, KubernetesConflict, KubernetesUnavailable, KubernetesUnknownKind, identity

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

#: The label of every object of a component (the value is the component's name).
COMPONENT_LABEL = "threeport.io/support-service"
#: Where the record of the components' users lives.
RECORD_NAMESPACE = "threeport-system"
RECORD_NAME = "threeport-support-services"
#: The record's annotation saying what is installed (JSON: component → version, digest, objects).
INSTALLED_ANNOTATION = "threeport.io/installed"
_MANAGED = {"app.kubernetes.io/managed-by": "threeport"}
#: The prefix of the annotations threeport writes (others' are left alone).
_OURS = "threeport.io/"
#: Compare-and-set attempts on a ConfigMap before giving up for now (TemporaryError).
CAS_ATTEMPTS = 8

#: The IngressClass gateways use, served by the ``ingress`` component.
INGRESS_CLASS = "threeport"
INGRESS_NAMESPACE = "ingress-nginx"
#: The labels of the ingress controller's pods (a Service exposing more of its ports selects them).
INGRESS_CONTROLLER_LABELS = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}
#: ingress-nginx's ConfigMap of TCP ports to expose (``"<port>": "<namespace>/<service>:<port>"``).
TCP_SERVICES = "tcp-services"
#: Let's Encrypt's ACME directories, by environment.
ACME_SERVERS = {
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
    "production": "https://acme-v02.api.letsencrypt.org/directory",
}


@dataclass(frozen=True)
class Domain:
    """A DNS domain in use on a cluster."""

    #: The domain, e.g. ``example.com``.
    name: str
    #: ``Public`` or ``Private``: the kind of DNS zone it is served from.
    zone: str = "Public"
    #: The contact Let's Encrypt is given for the domain's certificates.
    admin_email: str = ""


@dataclass(frozen=True)
class Settings:
    """What a component's manifests depend on besides its version."""

    #: The domains in use on the cluster (sorted: the same domains make the same manifests).
    domains: tuple[Domain, ...] = ()
    #: Who owns the DNS records external-dns writes (its TXT owner id), one per cluster.
    owner: str = "threeport"


@dataclass(frozen=True)
class Component:
    """One supporting service: its pinned version, its manifests, and the object whose presence says it runs."""

    name: str
    version: str
    #: ``manifests(version, settings)``: the objects to apply, in apply order.
    manifests: Callable[[str, Settings], list[dict[str, Any]]]
    #: (apiVersion, kind, namespace, name) of the object that runs it.
    probe: tuple[str, str, Optional[str], str]
    #: API versions the component's own CRDs serve (a new cluster serves them only shortly after the CRDs).
    custom_api_versions: frozenset[str] = frozenset()

    def objects(self, settings: Settings) -> list[dict[str, Any]]:
        """The manifests for ``settings``, each labelled with the component and its version."""
        labels = {COMPONENT_LABEL: self.name, "app.kubernetes.io/version": self.version, **_MANAGED}
        objects = []
        for obj in self.manifests(self.version, settings):
            obj = copy.deepcopy(obj)
            metadata = obj.setdefault("metadata", {})
            metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
            objects.append(obj)
        return objects


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
    cluster.ensure_namespace(RECORD_NAMESPACE, labels=_MANAGED)
    return _VersionedConfigMap.read(cluster, namespace=RECORD_NAMESPACE, name=RECORD_NAME, labels=_MANAGED)


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
            cluster, namespace=namespace, name=name, labels={**_MANAGED, **(labels or {})}, create=create
        )
        if config_map.version is None:
            return {}
        data = edit(dict(config_map.data))
        if config_map.write(cluster, data=data, annotations=config_map.annotations):
            return data
    raise TemporaryError(f"ConfigMap {namespace}/{name} at {cluster.endpoint} keeps changing: trying again")


# Manifests -------------------------------------------------------------------------------------


def issuer_name(environment: str, domain: str) -> str:
    """The ClusterIssuer signing ``domain``'s certificates with Let's Encrypt's ``environment``."""
    return f"letsencrypt-{environment}-{domain.strip('.').lower()}"


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _service_account(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}


def _cluster_role(name: str, rules: list[tuple[str, str, str]]) -> dict[str, Any]:
    """A ClusterRole from (API groups, resources, verbs) rows, each a comma-separated list."""
    parsed = [
        {"apiGroups": groups.split(","), "resources": resources.split(","), "verbs": verbs.split(",")}
        for groups, resources, verbs in rules
    ]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": parsed,
    }


def _cluster_role_binding(name: str, role: str, accounts: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": n, "namespace": ns} for n, ns in accounts],
    }


_POD_ENV = [
    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
]


def _deployment(
    name: str, namespace: str, *, labels: dict[str, str], account: str, container: dict[str, Any], replicas: int = 1
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": account,
                    "securityContext": {"runAsNonRoot": True},
                    "containers": [{"imagePullPolicy": "IfNotPresent", **container}],
                },
            },
        },
    }


def _ingress_manifests(version: str, settings: Settings) -> list[dict[str, Any]]:
    """ingress-nginx serving the IngressClass ``threeport`` behind a LoadBalancer Service."""
    ns, labels = INGRESS_NAMESPACE, INGRESS_CONTROLLER_LABELS
    args = [
        "/nginx-ingress-controller",
        f"--publish-service=$(POD_NAMESPACE)/{ns}-controller",
        "--election-id=ingress-nginx-leader",
        "--controller-class=k8s.io/ingress-nginx",
        f"--ingress-class={INGRESS_CLASS}",
        f"--configmap=$(POD_NAMESPACE)/{ns}-controller",
        f"--tcp-services-configmap=$(POD_NAMESPACE)/{TCP_SERVICES}",
        "--watch-ingress-without-class=false",
    ]
    container = {
        "name": "controller",
        "image": f"registry.k8s.io/ingress-nginx/controller:{version}",
        "args": args,
        "env": _POD_ENV,
        "ports": [
            {"name": "http", "containerPort": 80, "protocol": "TCP"},
            {"name": "https", "containerPort": 443, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 10254}, "periodSeconds": 10},
        "securityContext": {"runAsUser": 101, "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}},
    }
    return [
        _namespace(ns),
        _service_account("ingress-nginx", ns),
        _cluster_role(
            "ingress-nginx",
            [
                ("", "configmaps,endpoints,nodes,pods,secrets,namespaces,services", "get,list,watch"),
                ("", "events", "create,patch"),
                ("networking.k8s.io", "ingresses,ingressclasses", "get,list,watch"),
                ("networking.k8s.io", "ingresses/status", "update"),
                ("discovery.k8s.io", "endpointslices", "get,list,watch"),
                ("coordination.k8s.io", "leases", "get,create,update"),
            ],
        ),
        _cluster_role_binding("ingress-nginx", "ingress-nginx", [("ingress-nginx", ns)]),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{ns}-controller", "namespace": ns},
            "data": {"allow-snippet-annotations": "false"},
        },
        _deployment(f"{ns}-controller", ns, labels=labels, account="ingress-nginx", container=container),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"{ns}-controller", "namespace": ns},
            "spec": {
                "type": "LoadBalancer",
                "externalTrafficPolicy": "Local",
                "selector": labels,
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                    {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"},
                ],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {"name": INGRESS_CLASS},
            "spec": {"controller": "k8s.io/ingress-nginx"},
        },
    ]


#: cert-manager's CRDs: (group, plural, kind, scope), with schemas that take any object (cert-manager validates).
_CERT_MANAGER_CRDS = [
    ("cert-manager.io", "certificates", "Certificate", "Namespaced"),
    ("cert-manager.io", "certificaterequests", "CertificateRequest", "Namespaced"),
    ("cert-manager.io", "issuers", "Issuer", "Namespaced"),
    ("cert-manager.io", "clusterissuers", "ClusterIssuer", "Cluster"),
    ("acme.cert-manager.io", "orders", "Order", "Namespaced"),
    ("acme.cert-manager.io", "challenges", "Challenge", "Namespaced"),
]


def _crd(group: str, plural: str, kind: str, scope: str) -> dict[str, Any]:
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()},
            "scope": scope,
            "versions": [
                {"name": "v1", "served": True, "storage": True, "schema": schema, "subresources": {"status": {}}}
            ],
        },
    }


def _cert_manager_manifests(version: str, settings: Settings) -> list[dict[str, Any]]:
    """cert-manager (controller, CA injector, webhook) and a staging and a production ClusterIssuer per domain."""
    ns = "cert-manager"
    image = "quay.io/jetstack/cert-manager-{}:" + version

    def deployment(name: str, part: str, args: list[str], **extra: Any) -> dict[str, Any]:
        labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": part}
        container = {"name": part, "image": image.format(part), "args": args, "env": _POD_ENV, **extra}
        return _deployment(name, ns, labels=labels, account=name, container=container)

    webhook_names = (
        "cert-manager-webhook,cert-manager-webhook.$(POD_NAMESPACE),cert-manager-webhook.$(POD_NAMESPACE).svc"
    )
    objects = [_crd(*crd) for crd in _CERT_MANAGER_CRDS]
    objects += [_namespace(ns)] + [_service_account(n, ns) for n in ("cert-manager", "cert-manager-cainjector")]
    objects += [
        _service_account("cert-manager-webhook", ns),
        _cluster_role(
            "cert-manager",
            [
                ("cert-manager.io,acme.cert-manager.io", "*", "*"),
                ("", "secrets,configmaps,services,pods,events", "get,list,watch,create,update,patch,delete"),
                ("networking.k8s.io", "ingresses", "get,list,watch,create,update,patch,delete"),
                ("apiextensions.k8s.io", "customresourcedefinitions", "get,list,watch,update,patch"),
                (
                    "admissionregistration.k8s.io",
                    "validatingwebhookconfigurations,mutatingwebhookconfigurations",
                    "get,list,watch,update,patch",
                ),
                ("coordination.k8s.io", "leases", "get,create,update,patch"),
            ],
        ),
        _cluster_role_binding(
            "cert-manager",
            "cert-manager",
            [(n, ns) for n in ("cert-manager", "cert-manager-cainjector", "cert-manager-webhook")],
        ),
        deployment(
            "cert-manager",
            "controller",
            [
                "--v=2",
                "--cluster-resource-namespace=$(POD_NAMESPACE)",
                "--leader-election-namespace=kube-system",
                f"--acme-http01-solver-image={image.format('acmesolver')}",
            ],
            ports=[{"name": "http-metrics", "containerPort": 9402, "protocol": "TCP"}],
        ),
        deployment("cert-manager-cainjector", "cainjector", ["--v=2", "--leader-election-namespace=kube-system"]),
        deployment(
            "cert-manager-webhook",
            "webhook",
            [
                "--v=2",
                "--secure-port=10250",
                "--dynamic-serving-ca-secret-namespace=$(POD_NAMESPACE)",
                "--dynamic-serving-ca-secret-name=cert-manager-webhook-ca",
                f"--dynamic-serving-dns-names={webhook_names}",
            ],
            ports=[{"name": "https", "containerPort": 10250, "protocol": "TCP"}],
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "cert-manager-webhook", "namespace": ns},
            "spec": {
                "type": "ClusterIP",
                "selector": {
                    "app.kubernetes.io/name": "cert-manager-webhook",
                    "app.kubernetes.io/component": "webhook",
                },
                "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}],
            },
        },
    ]
    for domain in settings.domains:
        for environment, server in ACME_SERVERS.items():
            name = issuer_name(environment, domain.name)
            acme = {
                "email": domain.admin_email,
                "server": server,
                "privateKeySecretRef": {"name": f"{name}-account-key"},
                "solvers": [
                    {
                        "selector": {"dnsZones": [domain.name]},
                        "http01": {"ingress": {"ingressClassName": INGRESS_CLASS}},
                    }
                ],
            }
            objects.append(
                {
                    "apiVersion": "cert-manager.io/v1",
                    "kind": "ClusterIssuer",
                    "metadata": {"name": name},
                    "spec": {"acme": acme},
                }
            )
    return objects


def _external_dns_manifests(version: str, settings: Settings) -> list[dict[str, Any]]:
    """external-dns publishing Services' and Ingresses' hosts under the domains in use, in AWS Route 53."""
    ns = "external-dns"
    zones = {domain.zone for domain in settings.domains}
    args = ["--source=service", "--source=ingress"]
    args += [f"--domain-filter={domain.name}" for domain in settings.domains]
    args += ["--provider=aws", "--policy=sync", "--registry=txt", f"--txt-owner-id={settings.owner}"]
    if len(zones) == 1:  # both kinds of zone in use: external-dns looks at both
        args.append(f"--aws-zone-type={zones.pop().lower()}")
    container = {
        "name": "external-dns",
        "image": f"registry.k8s.io/external-dns/external-dns:{version}",
        "args": args,
        "ports": [{"name": "http", "containerPort": 7979, "protocol": "TCP"}],
    }
    deployment = _deployment(
        "external-dns",
        ns,
        labels={"app.kubernetes.io/name": "external-dns"},
        account="external-dns",
        container=container,
    )
    deployment["spec"]["strategy"] = {"type": "Recreate"}  # never two writers of the same records
    return [
        _namespace(ns),
        _service_account("external-dns", ns),
        _cluster_role(
            "external-dns",
            [
                ("", "services,endpoints,pods,nodes", "get,list,watch"),
                ("networking.k8s.io", "ingresses", "get,list,watch"),
                ("discovery.k8s.io", "endpointslices", "get,list,watch"),
            ],
        ),
        _cluster_role_binding("external-dns-viewer", "external-dns", [("external-dns", ns)]),
        deployment,
    ]


#: Every supporting service, its pinned version and its manifests: the one place versions are chosen.
COMPONENTS: dict[str, Component] = {
    component.name: component
    for component in (
        Component(
            "ingress",
            "v1.11.3",
            _ingress_manifests,
            probe=("apps/v1", "Deployment", INGRESS_NAMESPACE, "ingress-nginx-controller"),
        ),
        Component(
            "cert-manager",
            "v1.15.3",
            _cert_manager_manifests,
            probe=("apps/v1", "Deployment", "cert-manager", "cert-manager"),
            custom_api_versions=frozenset({"cert-manager.io/v1", "acme.cert-manager.io/v1"}),
        ),
        Component(
            "external-dns",
            "v0.14.2",
            _external_dns_manifests,
            probe=("apps/v1", "Deployment", "external-dns", "external-dns"),
        ),
    )
}
