"""The GatewayInstance and DomainNameInstance reconcilers (the ``gateways`` queue): reach a workload, name it in DNS.

Both act on the cluster that serves them: their own runtime, else their
workload's (where it is deployed), else the default runtime.

A GatewayInstance makes its workload a user of the supporting services it
needs (:mod:`tasks.support_services`: ``ingress``, and ``cert-manager`` when
a port has TLS and the gateway has a domain). Then, in the namespace of the
workload's Service (the workload's namespace from its status by default: the
gateway waits until there is one), it applies an Ingress of class
``threeport`` routing its host (``<sub_domain>.<domain>``; none without a
domain) and paths to that Service, with TLS signed by cert-manager, and
exposes its TCP ports through ingress-nginx's TCP services ConfigMap and a
LoadBalancer Service of its own. What it makes carries :data:`GATEWAY_LABEL`
and its status lists what it touched before it touches it, so deleting it
removes exactly that and then releases the supporting services (each goes
with its last user). Reconciling what was applied already writes nothing.

A DomainNameInstance makes its workload a user of ``external-dns``, whose
domain filter is every domain in use on the cluster, and records the DNS
names published for it: the hosts of its workload's gateways under the domain.
On an EKS cluster the control plane built, external-dns writes Route 53
records with an IAM role of its own (IRSA, :mod:`tasks.aws_irsa`): the role,
named after the cluster and tagged with it, is found or made before
external-dns is applied with its ARN on its ServiceAccount, and deleted once
no domain name is served on the cluster any more. Elsewhere external-dns
gets no AWS credentials from the control plane: the operator provides them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

from models import store
from models.aws import AwsEksKubernetesRuntimeInstance
from models.gateways import DomainNameDefinition, DomainNameInstance, GatewayDefinition, GatewayInstance
from models.kubernetes import KubernetesRuntimeInstance
from models.workloads import WorkloadInstance, WorkloadResourceInstance

from . import aws_irsa, support_services
from .aws_adapter import Aws, tags_for
from .aws_eks import TAG_PART, resource_names
from .errors import PermanentError, TemporaryError
from .kubernetes_adapter import Cluster, KubernetesUnknownKind, identity
from .kubernetes_runtimes import connect
from .reconcilers import Reconciler, register
from .support_components import EXTERNAL_DNS_NAMESPACE, EXTERNAL_DNS_SERVICE_ACCOUNT
from .support_services import (
    COMPONENT_LABEL,
    INGRESS_CLASS,
    INGRESS_CONTROLLER_LABELS,
    INGRESS_NAMESPACE,
    TCP_SERVICES,
    Domain,
    Settings,
    issuer_name,
)

__all__ = [
    "reconcile_gateway",
    "delete_gateway",
    "reconcile_domain_name",
    "delete_domain_name",
    "serving_runtime",
    "GATEWAY_LABEL",
    "ACME_ENVIRONMENT",
    "DNS_ROLE_POLICY",
]

#: The label tying an object to its GatewayInstance (the value is the gateway's id).
GATEWAY_LABEL = "threeport.io/gateway-instance"
_ANNOTATION_NAME = "threeport.io/gateway-instance-name"
#: The Let's Encrypt environment that signs gateways' certificates (``staging`` while trying things out).
ACME_ENVIRONMENT = "production"
#: What the status says of a TCP port.
_TCP_EXPOSED = f"exposed through the ingress controller's TCP services ConfigMap {INGRESS_NAMESPACE}/{TCP_SERVICES}"
#: The inline policy of external-dns's IAM role on EKS.
DNS_ROLE_POLICY = "threeport-external-dns"
#: What external-dns may do in Route 53 with its role: change records in hosted zones, and read zones and records.
_DNS_CHANGE_ACTIONS = ("route53:ChangeResourceRecordSets",)
_DNS_READ_ACTIONS = ("route53:ListHostedZones", "route53:ListResourceRecordSets", "route53:ListTagsForResource")
#: The kinds a gateway makes (what its label is looked for on).
_GATEWAY_KINDS = [("networking.k8s.io/v1", "Ingress"), ("cert-manager.io/v1", "Certificate"), ("v1", "Service")]

Served = Union[GatewayInstance, DomainNameInstance]


# Where gateways and domain names are served --------------------------------------------------


def serving_runtime(obj: Served) -> KubernetesRuntimeInstance:
    """The runtime ``obj`` is served on; TemporaryError while there is none."""
    runtime_id = _serving_runtime_id(obj)
    if runtime_id is None:
        raise TemporaryError(
            "no runtime to serve it on: name a kubernetes_runtime_instance or make one the default_runtime", delay=None
        )
    return store.get(KubernetesRuntimeInstance, runtime_id)


def _serving_runtime_id(obj: Served) -> Optional[uuid.UUID]:
    """Its own runtime, else where its workload is deployed (or to be), else the default runtime."""
    if obj.kubernetes_runtime_instance_id is not None:
        return obj.kubernetes_runtime_instance_id
    workload = WorkloadInstance.get_or_none(WorkloadInstance.id == obj.workload_instance_id)
    if workload is not None:
        deployed_to = ((workload.status or {}).get("inventory") or {}).get("runtime_id")
        if deployed_to:
            return uuid.UUID(deployed_to)
        if workload.kubernetes_runtime_instance_id is not None:
            return workload.kubernetes_runtime_instance_id
    table = KubernetesRuntimeInstance
    default = table.select(table.id).where(table.default_runtime & table.deletion_scheduled.is_null()).first()
    return default.id if default is not None else None


def _live(model: type[Served], **fields: Any) -> Iterable[Served]:
    """The objects of ``model`` with ``fields`` that are not being deleted."""
    query = model.select().where(model.deletion_scheduled.is_null())
    for name, value in fields.items():
        query = query.where(getattr(model, name) == value)
    return query


# Gateways --------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What a gateway puts in the cluster: objects to apply, TCP services entries, and what its status says."""

    objects: list[dict[str, Any]]
    tcp: dict[str, str]
    report: dict[str, Any]

    @property
    def refs(self) -> list[dict[str, Any]]:
        return [_ref(obj) for obj in self.objects]

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.objects, self.tcp], sort_keys=True).encode()).hexdigest()


def reconcile_gateway(gateway: GatewayInstance) -> None:
    """Make the supporting services serve the workload, and route the gateway's host, paths and ports to it."""
    definition = store.get(GatewayDefinition, gateway.gateway_definition_id)
    workload = store.get(WorkloadInstance, gateway.workload_instance_id)
    namespace = (workload.status or {}).get("namespace")
    if not namespace:
        raise TemporaryError(f"waiting for WorkloadInstance {workload.name!r} to record its namespace", delay=None)
    runtime = serving_runtime(gateway)
    status = dict(gateway.status or {})
    if status.get("runtime_id") not in (None, str(runtime.id)):  # moved to another cluster: leave the old one
        _tear_down(gateway, status)
        status = {}
    cluster = connect(runtime)
    domain = _domain_of(definition)
    components = _components(definition, domain)
    touched = list(dict.fromkeys([*(status.get("components") or []), *components]))
    store.merge_status(GatewayInstance, gateway.id, {"runtime_id": str(runtime.id), "components": touched})
    for component in components:
        settings = functools.partial(_settings, component, runtime.id)
        support_services.need(cluster, component, str(workload.id), settings=settings)
    plan = _plan(cluster, gateway, definition, workload, namespace, domain)
    if status.get("applied_digest") != plan.digest() or not all(_exists(cluster, ref) for ref in plan.refs):
        _apply(cluster, gateway, plan, status)
    for component in reversed(touched):
        if component not in components:
            _release(cluster, gateway, component, runtime.id)
    store.merge_status(GatewayInstance, gateway.id, {"components": components, **plan.report})


def delete_gateway(gateway: GatewayInstance) -> None:
    """Remove what the gateway made, then release the supporting services it needed."""
    status = gateway.status or {}
    if status.get("runtime_id"):
        _tear_down(gateway, status)


def _domain_of(definition: GatewayDefinition) -> Optional[DomainNameDefinition]:
    if definition.domain_name_definition_id is None:
        return None
    return DomainNameDefinition.get_or_none(DomainNameDefinition.id == definition.domain_name_definition_id)


def _host(definition: GatewayDefinition, domain: Optional[DomainNameDefinition]) -> Optional[str]:
    """``<sub_domain>.<domain>`` (the domain itself without a sub-domain); None without a domain."""
    if domain is None:
        return None
    base = domain.domain.strip(".").lower()
    sub = (definition.sub_domain or "").strip(".").lower()
    return f"{sub}.{base}" if sub else base


def _tls_ports(ports: Optional[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [port for port in ports or [] if port.get("tls_enabled")]


def _components(definition: GatewayDefinition, domain: Optional[DomainNameDefinition]) -> list[str]:
    """The supporting services the gateway needs: the ingress controller, and cert-manager for TLS on a domain."""
    tls = domain is not None and bool(_tls_ports(definition.http_ports) or _tls_ports(definition.tcp_ports))
    return ["ingress", "cert-manager"] if tls else ["ingress"]


def _settings(component: str, runtime_id: uuid.UUID) -> Settings:
    """What ``component``'s manifests depend on for the cluster of ``runtime_id``, as the database says now."""
    if component == "cert-manager":
        return Settings(domains=_tls_domains(runtime_id))
    if component == "external-dns":
        return _dns_settings(runtime_id)
    return Settings()


def _tls_domains(runtime_id: uuid.UUID) -> tuple[Domain, ...]:
    """The domains of the gateways served on the runtime that have TLS (one pair of ClusterIssuers each)."""
    domains = {}
    for gateway in _live(GatewayInstance):
        definition = GatewayDefinition.get_or_none(GatewayDefinition.id == gateway.gateway_definition_id)
        domain = _domain_of(definition) if definition is not None else None
        if domain is None or "cert-manager" not in _components(definition, domain):
            continue
        if _serving_runtime_id(gateway) == runtime_id:
            domains[domain.domain] = Domain(domain.domain, domain.zone, domain.admin_email)
    return tuple(domains[name] for name in sorted(domains))


def _release(cluster: Cluster, gateway: GatewayInstance, component: str, runtime_id: uuid.UUID) -> None:
    """Release the workload from ``component`` unless another of its gateways on the cluster needs it too."""
    for other in _live(GatewayInstance, workload_instance=gateway.workload_instance_id):
        if other.id == gateway.id:
            continue
        definition = GatewayDefinition.get_or_none(GatewayDefinition.id == other.gateway_definition_id)
        if definition is None or component not in _components(definition, _domain_of(definition)):
            continue
        if _serving_runtime_id(other) == runtime_id:
            return
    settings = functools.partial(_settings, component, runtime_id)
    support_services.release(cluster, component, str(gateway.workload_instance_id), settings=settings)


def _plan(
    cluster: Cluster,
    gateway: GatewayInstance,
    definition: GatewayDefinition,
    workload: WorkloadInstance,
    namespace: str,
    domain: Optional[DomainNameDefinition],
) -> _Plan:
    """The Ingress, the TCP Service and Certificate, and the TCP services entries of the gateway."""
    service, namespace, ports = _service_of(cluster, definition, workload, namespace)
    host = _host(definition, domain)
    name = _object_name(gateway)
    metadata = {"labels": {GATEWAY_LABEL: str(gateway.id)}, "annotations": {_ANNOTATION_NAME: gateway.name}}
    issuer = issuer_name(ACME_ENVIRONMENT, domain.domain) if domain is not None else None
    objects: list[dict[str, Any]] = []
    report: dict[str, Any] = {"namespace": namespace, "service": service, "hosts": [host] if host else []}
    report |= {"ingress": None, "routes": [], "tls": False, "https_redirect": False, "issuer": None, "tcp": []}
    if definition.http_ports:
        ingress, routes = _ingress(definition, name, namespace, metadata, host, service, ports, issuer)
        objects.append(ingress)
        tls = "tls" in ingress["spec"]
        report |= {"ingress": f"{namespace}/{name}", "routes": routes, "tls": tls, "issuer": issuer if tls else None}
        report["https_redirect"] = (
            ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"
        )
    tcp = {
        str(port["port"]): f"{namespace}/{service}:{_backend_port(ports, port['port'])}"
        for port in definition.tcp_ports or []
    }
    if tcp:
        objects.append(_tcp_service(name, metadata, definition.tcp_ports))
        tls_ports = {port["port"] for port in _tls_ports(definition.tcp_ports)} if host else set()
        if tls_ports:
            objects.append(_certificate(name, namespace, metadata, host, issuer))
        report["tcp"] = [
            {
                "port": port["port"],
                "target": tcp[str(port["port"])],
                "exposed": _TCP_EXPOSED,
                "service": f"{INGRESS_NAMESPACE}/{name}-tcp",
                "tls_secret": f"{namespace}/{name}-tcp-tls" if port["port"] in tls_ports else None,
            }
            for port in definition.tcp_ports
        ]
    return _Plan(objects, tcp, report)


def _object_name(gateway: GatewayInstance) -> str:
    """``<gateway-name>-<8 hex of its id>``, as a DNS label."""
    slug = re.sub(r"[^a-z0-9-]+", "-", gateway.name.lower()).strip("-")[:40].strip("-") or "gateway"
    return f"{slug}-{gateway.id.hex[:8]}"


def _service_of(
    cluster: Cluster, definition: GatewayDefinition, workload: WorkloadInstance, namespace: str
) -> tuple[str, str, list[dict[str, Any]]]:
    """(name, namespace, ports) of the Service to route to: ``service_name``, else the workload's first Service."""
    table = WorkloadResourceInstance
    rows = table.select().where(table.workload_instance == workload.id).order_by(table.position)
    services = [row.json_definition for row in rows if row.json_definition.get("kind") == "Service"]
    if definition.service_name:
        named = [s for s in services if s["metadata"]["name"] == definition.service_name]
        found = named[0] if named else cluster.find("v1", "Service", definition.service_name, namespace)
    elif services:
        found = services[0]
    else:
        raise PermanentError(
            f"the gateway names no service_name and WorkloadInstance {workload.name!r} has no Service to route to"
        )
    metadata = (found or {}).get("metadata") or {}
    ports = ((found or {}).get("spec") or {}).get("ports") or []
    return metadata.get("name") or definition.service_name, metadata.get("namespace") or namespace, ports


def _backend_port(ports: list[dict[str, Any]], number: int) -> int:
    """The Service's port numbered ``number``, else its first port, else ``number``."""
    if any(port.get("port") == number for port in ports):
        return number
    return int(ports[0]["port"]) if ports else number


def _ingress(
    definition: GatewayDefinition,
    name: str,
    namespace: str,
    metadata: dict[str, Any],
    host: Optional[str],
    service: str,
    ports: list[dict[str, Any]],
    issuer: Optional[str],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Ingress of the HTTP ports (one path per distinct path, TLS when a port asks and there is a host)."""
    paths, routes = {}, []
    for port in definition.http_ports:
        path = port.get("path") or "/"
        if path in paths:
            continue
        number = _backend_port(ports, port["port"])
        backend = {"service": {"name": service, "port": {"number": number}}}
        paths[path] = {"path": path, "pathType": "Prefix", "backend": backend}
        routes.append({"host": host, "path": path, "service": service, "port": number})
    rule: dict[str, Any] = {"http": {"paths": list(paths.values())}}
    spec: dict[str, Any] = {"ingressClassName": INGRESS_CLASS, "rules": [rule]}
    tls = host is not None and bool(_tls_ports(definition.http_ports))
    redirect = tls and any(port.get("https_redirect") for port in definition.http_ports)
    annotations = {**metadata["annotations"], "nginx.ingress.kubernetes.io/ssl-redirect": str(redirect).lower()}
    if host is not None:
        rule["host"] = host
    if tls:
        annotations["cert-manager.io/cluster-issuer"] = issuer
        spec["tls"] = [{"hosts": [host], "secretName": f"{name}-tls"}]
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": namespace, "labels": metadata["labels"], "annotations": annotations},
        "spec": spec,
    }
    return ingress, routes


def _tcp_service(name: str, metadata: dict[str, Any], tcp_ports: list[dict[str, Any]]) -> dict[str, Any]:
    """A LoadBalancer Service opening the TCP ports on the ingress controller's pods."""
    ports = [
        {"name": f"tcp-{port['port']}", "port": port["port"], "targetPort": port["port"], "protocol": "TCP"}
        for port in tcp_ports
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-tcp", "namespace": INGRESS_NAMESPACE, **metadata},
        "spec": {"type": "LoadBalancer", "selector": INGRESS_CONTROLLER_LABELS, "ports": ports},
    }


def _certificate(name: str, namespace: str, metadata: dict[str, Any], host: str, issuer: str) -> dict[str, Any]:
    """The certificate a workload terminates TLS on its TCP ports with (ingress-nginx passes TCP through)."""
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": f"{name}-tcp", "namespace": namespace, **metadata},
        "spec": {
            "secretName": f"{name}-tcp-tls",
            "dnsNames": [host],
            "issuerRef": {"kind": "ClusterIssuer", "name": issuer, "group": "cert-manager.io"},
        },
    }


def _apply(cluster: Cluster, gateway: GatewayInstance, plan: _Plan, status: dict[str, Any]) -> None:
    """Record what is about to be touched, set the TCP entries, apply the objects, delete what left the plan."""
    previous_tcp = status.get("tcp_services") or {}
    objects = plan.refs + [ref for ref in status.get("objects") or [] if ref not in plan.refs]
    touched = {"objects": objects, "tcp_services": {**previous_tcp, **plan.tcp}}
    store.merge_status(GatewayInstance, gateway.id, touched)
    if plan.tcp or previous_tcp:
        _edit_tcp_services(cluster, wanted=plan.tcp, previous=previous_tcp, create=bool(plan.tcp))
    for obj in plan.objects:
        cluster.apply(obj)
    _delete_labelled(cluster, gateway, keep={identity(obj) for obj in plan.objects})
    done = {"objects": plan.refs, "tcp_services": plan.tcp, "applied_digest": plan.digest()}
    store.merge_status(GatewayInstance, gateway.id, done)


def _edit_tcp_services(cluster: Cluster, *, wanted: dict[str, str], previous: dict[str, str], create: bool) -> None:
    """Make ingress-nginx's TCP services entries of the gateway ``wanted`` (its ``previous`` ones may go)."""

    def edit(data: dict[str, str]) -> dict[str, str]:
        for port, target in previous.items():
            if port not in wanted and data.get(port) == target:
                del data[port]
        for port, target in wanted.items():
            if data.get(port) not in (None, target, previous.get(port)):
                raise PermanentError(f"TCP port {port} of the ingress controller already forwards to {data[port]}")
            data[port] = target
        return data

    support_services.edit_config_map(
        cluster,
        namespace=INGRESS_NAMESPACE,
        name=TCP_SERVICES,
        edit=edit,
        labels={COMPONENT_LABEL: "ingress"},  # goes with the ingress controller
        create=create,
    )


def _delete_labelled(cluster: Cluster, gateway: GatewayInstance, *, keep: set[str]) -> None:
    """Delete the objects carrying the gateway's label that are not in ``keep``."""
    for api_version, kind in _GATEWAY_KINDS:
        try:
            found = cluster.list(api_version, kind, label_selector=f"{GATEWAY_LABEL}={gateway.id}")
        except KubernetesUnknownKind:
            continue  # cert-manager is not (or no longer) there
        for obj in found:
            if identity(obj) not in keep:
                _delete(cluster, _ref(obj))


def _tear_down(gateway: GatewayInstance, status: dict[str, Any]) -> None:
    """Remove what the gateway made on the cluster its status names, then release the supporting services."""
    runtime = KubernetesRuntimeInstance.get_or_none(KubernetesRuntimeInstance.id == status["runtime_id"])
    if runtime is None:
        return  # the cluster is gone from the control plane: nothing left to reach
    cluster = connect(runtime)
    for ref in reversed(status.get("objects") or []):
        _delete(cluster, ref)
    _delete_labelled(cluster, gateway, keep=set())
    if status.get("tcp_services"):
        _edit_tcp_services(cluster, wanted={}, previous=status["tcp_services"], create=False)
    for component in reversed(status.get("components") or []):
        _release(cluster, gateway, component, runtime.id)
    left = {"runtime_id": None, "objects": [], "tcp_services": {}, "components": [], "applied_digest": None}
    store.merge_status(GatewayInstance, gateway.id, left)


def _exists(cluster: Cluster, ref: dict[str, Any]) -> bool:
    return cluster.find(ref["apiVersion"], ref["kind"], ref["name"], ref.get("namespace")) is not None


def _delete(cluster: Cluster, ref: dict[str, Any]) -> None:
    try:
        cluster.delete(ref["apiVersion"], ref["kind"], ref["name"], ref.get("namespace"))
    except KubernetesUnknownKind:
        pass  # the cluster serves the kind no more: none is left


def _ref(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj["metadata"]
    ref = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": metadata["name"]}
    return ref | ({"namespace": metadata["namespace"]} if metadata.get("namespace") else {})


# Domain names ----------------------------------------------------------------------------------


def reconcile_domain_name(instance: DomainNameInstance) -> None:
    """Make external-dns publish the domain on the workload's cluster, and record the names published."""
    definition = store.get(DomainNameDefinition, instance.domain_name_definition_id)
    runtime = serving_runtime(instance)
    status = instance.status or {}
    if status.get("runtime_id") not in (None, str(runtime.id)):  # moved to another cluster: leave the old one
        _leave_dns(instance, status)
    store.merge_status(DomainNameInstance, instance.id, {"runtime_id": str(runtime.id)})
    cluster = connect(runtime)
    role_arn = _ensure_dns_role(runtime.id)
    settings = functools.partial(_dns_settings, runtime.id)
    support_services.need(cluster, "external-dns", str(instance.workload_instance_id), settings=settings)
    report = {
        "domain": definition.domain,
        "zone": definition.zone,
        "dns_names": _dns_names(instance, definition),
        "domain_filter": [domain.name for domain in settings().domains],
        "provider": "aws",
        "aws_role_arn": role_arn,
    }
    store.merge_status(DomainNameInstance, instance.id, report)


def delete_domain_name(instance: DomainNameInstance) -> None:
    """Release the workload from external-dns on its cluster (which goes with its last domain)."""
    status = instance.status or {}
    if status.get("runtime_id"):
        _leave_dns(instance, status)


def _leave_dns(instance: DomainNameInstance, status: dict[str, Any]) -> None:
    runtime = KubernetesRuntimeInstance.get_or_none(KubernetesRuntimeInstance.id == status["runtime_id"])
    if runtime is None:
        return
    for other in _live(DomainNameInstance, workload_instance=instance.workload_instance_id):
        if other.id != instance.id and _serving_runtime_id(other) == runtime.id:
            break  # the workload still has a domain on that cluster: it stays a user
    else:
        settings = functools.partial(_dns_settings, runtime.id)
        support_services.release(
            connect(runtime), "external-dns", str(instance.workload_instance_id), settings=settings
        )
        _drop_dns_role(runtime.id)
    store.merge_status(DomainNameInstance, instance.id, {"runtime_id": None})


def _served_domain_names(runtime_id: uuid.UUID) -> list[DomainNameInstance]:
    """The domain names served on the runtime, but those being deleted."""
    return [instance for instance in _live(DomainNameInstance) if _serving_runtime_id(instance) == runtime_id]


def _dns_settings(runtime_id: uuid.UUID) -> Settings:
    """external-dns's settings on the runtime's cluster: the domains in use there, its owner id, its role on EKS."""
    domains = {}
    for instance in _served_domain_names(runtime_id):
        definition = DomainNameDefinition.get_or_none(DomainNameDefinition.id == instance.domain_name_definition_id)
        if definition is not None:
            domains[definition.domain] = Domain(definition.domain, definition.zone, definition.admin_email)
    role = _dns_role(runtime_id)
    return Settings(
        domains=tuple(domains[name] for name in sorted(domains)),
        owner=f"threeport-{runtime_id.hex[:8]}",
        aws_role_arn=role.arn if role is not None else None,
    )


# external-dns's IAM role on EKS ----------------------------------------------------------------


@dataclass(frozen=True)
class _DnsRole:
    """external-dns's IAM role on an EKS cluster the control plane built: its name and ARN, known before it is made."""

    eks: AwsEksKubernetesRuntimeInstance
    aws: Aws
    account_id: str
    name: str

    @property
    def arn(self) -> str:
        return aws_irsa.role_arn(self.name, account_id=self.account_id, region=self.aws.region)


def _dns_role(runtime_id: uuid.UUID) -> Optional[_DnsRole]:
    """external-dns's role on the runtime's cluster when that is an EKS cluster the control plane built."""
    eks = aws_irsa.eks_cluster_of(runtime_id)
    if eks is None:
        return None
    aws, account = aws_irsa.aws_of(eks)
    return _DnsRole(eks, aws, account.account_id, resource_names(eks)["external_dns_role"])


def _ensure_dns_role(runtime_id: uuid.UUID) -> Optional[str]:
    """Find or make external-dns's role, trusted by its ServiceAccount, with its Route 53 policy: its ARN.

    None when the runtime is not an EKS cluster the control plane built;
    TemporaryError while the cluster has not recorded its OIDC issuer yet.
    """
    role = _dns_role(runtime_id)
    if role is None:
        return None
    issuer = aws_irsa.oidc_issuer(role.eks)
    if issuer is None:
        raise TemporaryError(f"waiting for EKS cluster {role.eks.name!r} to record its OIDC issuer", delay=None)
    subject = aws_irsa.service_account_subject(EXTERNAL_DNS_NAMESPACE, EXTERNAL_DNS_SERVICE_ACCOUNT)
    trust = aws_irsa.web_identity_trust(
        issuer=issuer, subject=subject, account_id=role.account_id, region=role.aws.region
    )
    tags = tags_for(role.eks, Name=role.name, **{TAG_PART: "external-dns-role"})
    description = f"external-dns on the threeport EKS cluster {resource_names(role.eks)['cluster']}"
    arn = aws_irsa.ensure_role(role.aws, role.name, trust=trust, tags=tags, description=description)
    if arn != role.arn:
        raise PermanentError(f"IAM role {role.name} is {arn}, not {role.arn}: is the AwsAccount's account_id right?")
    aws_irsa.ensure_inline_policy(role.aws, role.name, DNS_ROLE_POLICY, _route53_policy(role.aws.region))
    return arn


def _drop_dns_role(runtime_id: uuid.UUID) -> None:
    """Delete external-dns's role on the runtime's EKS cluster once no domain name is served there."""
    if _served_domain_names(runtime_id):
        return
    role = _dns_role(runtime_id)
    if role is None:
        return
    aws_irsa.delete_role(role.aws, role.name, (DNS_ROLE_POLICY,))
    if _served_domain_names(runtime_id):  # one came meanwhile, and may have found the role before it went
        _ensure_dns_role(runtime_id)


def _route53_policy(region: str) -> str:
    """Change records in any hosted zone (a domain name names no zone id), read zones, records and their tags."""
    zones = f"arn:{aws_irsa.partition(region)}:route53:::hostedzone/*"
    return aws_irsa.policy_document(
        {"Sid": "ChangeRecords", "Effect": "Allow", "Action": list(_DNS_CHANGE_ACTIONS), "Resource": [zones]},
        {"Sid": "ReadZones", "Effect": "Allow", "Action": list(_DNS_READ_ACTIONS), "Resource": ["*"]},
    )


def _dns_names(instance: DomainNameInstance, definition: DomainNameDefinition) -> list[str]:
    """The hosts of the workload's gateways under the domain."""
    names = set()
    for gateway in _live(GatewayInstance, workload_instance=instance.workload_instance_id):
        gateway_definition = GatewayDefinition.get_or_none(GatewayDefinition.id == gateway.gateway_definition_id)
        if gateway_definition is not None and gateway_definition.domain_name_definition_id == definition.id:
            names.add(_host(gateway_definition, definition))
    return sorted(names)


register(GatewayInstance.kind, Reconciler(reconcile=reconcile_gateway, delete=delete_gateway))
register(DomainNameInstance.kind, Reconciler(reconcile=reconcile_domain_name, delete=delete_domain_name))
