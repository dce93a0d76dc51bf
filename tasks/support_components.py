"""The supporting services, pinned in one place: each component's version and the manifests it is made of.

:data:`COMPONENTS` is the table :mod:`tasks.support_services` installs from:
a component's manifests are a function of its version and of the
cluster's :class:`Settings` (the domains in use there, say). Change a
version here and the next reconcile of a user applies the new manifests.
The manifests are minimal but real: ingress-nginx, cert-manager (its CRDs,
controllers and a Let's Encrypt issuer per domain), external-dns and the
External Secrets Operator (its CRDs and controller).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = [
    "COMPONENTS",
    "Component",
    "Settings",
    "Domain",
    "COMPONENT_LABEL",
    "MANAGED_LABELS",
    "INGRESS_CLASS",
    "INGRESS_NAMESPACE",
    "INGRESS_CONTROLLER_LABELS",
    "TCP_SERVICES",
    "ACME_SERVERS",
    "EKS_ROLE_ANNOTATION",
    "EXTERNAL_DNS_NAMESPACE",
    "EXTERNAL_DNS_SERVICE_ACCOUNT",
    "EXTERNAL_SECRETS_API",
    "EXTERNAL_SECRETS_NAMESPACE",
    "issuer_name",
]

#: The label of every object of a component (the value is the component's name).
COMPONENT_LABEL = "threeport.io/support-service"
MANAGED_LABELS = {"app.kubernetes.io/managed-by": "threeport"}

#: The IngressClass gateways use, served by the ``ingress`` component.
INGRESS_CLASS = "threeport"
INGRESS_NAMESPACE = "ingress-nginx"
#: The labels of the ingress controller's pods (a Service exposing more of its ports selects them).
INGRESS_CONTROLLER_LABELS = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}
#: ingress-nginx's ConfigMap of TCP ports to expose (``"<port>": "<namespace>/<service>:<port>"``).
TCP_SERVICES = "tcp-services"
#: The ServiceAccount annotation naming the IAM role its pods assume on EKS (IRSA).
EKS_ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
#: Where external-dns runs, and its ServiceAccount (the subject its IAM role trusts on EKS).
EXTERNAL_DNS_NAMESPACE = "external-dns"
EXTERNAL_DNS_SERVICE_ACCOUNT = "external-dns"
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
    #: The IAM role external-dns's service account assumes on EKS (IRSA); None elsewhere.
    aws_role_arn: Optional[str] = None


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
        labels = {COMPONENT_LABEL: self.name, "app.kubernetes.io/version": self.version, **MANAGED_LABELS}
        objects = []
        for obj in self.manifests(self.version, settings):
            obj = copy.deepcopy(obj)
            metadata = obj.setdefault("metadata", {})
            metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
            objects.append(obj)
        return objects


# Manifests -------------------------------------------------------------------------------------


def issuer_name(environment: str, domain: str) -> str:
    """The ClusterIssuer signing ``domain``'s certificates with Let's Encrypt's ``environment``."""
    return f"letsencrypt-{environment}-{domain.strip('.').lower()}"


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _service_account(name: str, namespace: str, annotations: Optional[dict[str, str]] = None) -> dict[str, Any]:
    metadata = {"name": name, "namespace": namespace} | ({"annotations": annotations} if annotations else {})
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata}


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


def _crd(group: str, plural: str, kind: str, scope: str, version: str = "v1") -> dict[str, Any]:
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
                {"name": version, "served": True, "storage": True, "schema": schema, "subresources": {"status": {}}}
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
    """external-dns publishing Services' and Ingresses' hosts under the domains in use, in AWS Route 53.

    With ``settings.aws_role_arn`` (on EKS) its ServiceAccount names the IAM
    role its pods get credentials of; elsewhere the operator provides them.
    """
    ns, account = EXTERNAL_DNS_NAMESPACE, EXTERNAL_DNS_SERVICE_ACCOUNT
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
        account=account,
        container=container,
    )
    deployment["spec"]["strategy"] = {"type": "Recreate"}  # never two writers of the same records
    annotations = {EKS_ROLE_ANNOTATION: settings.aws_role_arn} if settings.aws_role_arn else None
    if annotations:  # so that its non-root process can read the web identity token EKS mounts
        deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"] = 65534
    return [
        _namespace(ns),
        _service_account(account, ns, annotations),
        _cluster_role(
            "external-dns",
            [
                ("", "services,endpoints,pods,nodes", "get,list,watch"),
                ("networking.k8s.io", "ingresses", "get,list,watch"),
                ("discovery.k8s.io", "endpointslices", "get,list,watch"),
            ],
        ),
        _cluster_role_binding("external-dns-viewer", "external-dns", [(account, ns)]),
        deployment,
    ]


#: External Secrets' API version and namespace, and the CRDs its controller needs: (group, plural, kind, scope).
EXTERNAL_SECRETS_API = "external-secrets.io/v1beta1"
EXTERNAL_SECRETS_NAMESPACE = "external-secrets"
_EXTERNAL_SECRETS_CRDS = [
    ("external-secrets.io", "externalsecrets", "ExternalSecret", "Namespaced"),
    ("external-secrets.io", "secretstores", "SecretStore", "Namespaced"),
    ("external-secrets.io", "clustersecretstores", "ClusterSecretStore", "Cluster"),
]


def _external_secrets_manifests(version: str, settings: Settings) -> list[dict[str, Any]]:
    """The External Secrets Operator's controller: it copies SecretStores' provider values into Secrets.

    Only the controller of ExternalSecrets and (Cluster)SecretStores runs:
    its webhook and the ClusterExternalSecret and PushSecret controllers are
    left out, as the CRDs they would need.
    """
    ns = EXTERNAL_SECRETS_NAMESPACE
    args = [
        "--concurrent=1",
        "--metrics-addr=:8080",
        "--loglevel=info",
        "--zap-time-encoding=epoch",
        "--enable-leader-election=true",
        "--enable-cluster-store-reconciler=true",
        "--enable-cluster-external-secret-reconciler=false",
        "--enable-push-secret-reconciler=false",
    ]
    container = {
        "name": "external-secrets",
        "image": f"ghcr.io/external-secrets/external-secrets:{version}",
        "args": args,
        "env": _POD_ENV,
        "ports": [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}],
    }
    stores = "secretstores,clustersecretstores,externalsecrets"
    objects = [_crd(*crd, version="v1beta1") for crd in _EXTERNAL_SECRETS_CRDS]
    objects += [
        _namespace(ns),
        _service_account("external-secrets", ns),
        _cluster_role(
            "external-secrets-controller",
            [
                ("external-secrets.io", stores, "get,list,watch"),
                (
                    "external-secrets.io",
                    ",".join(f"{plural}/{sub}" for plural in stores.split(",") for sub in ("status", "finalizers")),
                    "get,update,patch",
                ),
                ("generators.external-secrets.io", "*", "get,list,watch"),
                ("", "secrets", "get,list,watch,create,update,patch,delete"),
                ("", "serviceaccounts,namespaces,configmaps", "get,list,watch"),
                ("", "serviceaccounts/token", "create"),
                ("", "events", "create,patch"),
                ("coordination.k8s.io", "leases", "get,create,update,patch"),
            ],
        ),
        _cluster_role_binding("external-secrets-controller", "external-secrets-controller", [("external-secrets", ns)]),
        _deployment(
            "external-secrets",
            ns,
            labels={"app.kubernetes.io/name": "external-secrets"},
            account="external-secrets",
            container=container,
        ),
    ]
    return objects


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
        Component(
            "external-secrets",
            "v0.10.4",
            _external_secrets_manifests,
            probe=("apps/v1", "Deployment", "external-secrets", "external-secrets"),
            custom_api_versions=frozenset({EXTERNAL_SECRETS_API}),
        ),
    )
}
