"""Gateways, domain names and the supporting services they install, end to end: real PostgreSQL, real NATS, a
real Dramatiq worker running the reconcile actor, and the real ``kubernetes`` client over HTTP to the API
server stand-in (tests/kube.py, which runs no controllers: nothing here gets a certificate or a DNS record).

Two workloads sharing the supporting services is a scenario of
tests/kube_scenarios.py, which tests/test_kubernetes_real.py runs on a real
cluster too; its test here adds what only the stand-in can tell.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import pytest
from dramatiq import Worker

from models import (
    DomainNameInstance,
    GatewayInstance,
    WorkloadInstance,
    store,
)
from tasks import actor, kubernetes_runtimes, support_services, workload_instances
from tasks.actor import declare_actors
from tasks.errors import TemporaryError
from tasks.gateways import GATEWAY_LABEL
from tasks.kubernetes_adapter import Cluster, Credentials, RetryPolicy
from tasks.support_services import COMPONENT_LABEL, COMPONENTS
from workers.locks import LockManager
from workers.outbox_relay import publish_rows

from . import kube_scenarios as scenarios
from .kube import RESOURCES, runtime_for
from .kube_scenarios import (
    WEB,
    StandIn,
    create,
    delete,
    deploy,
    domain,
    gateway,
    gateway_definition,
    reconciled,
    record,
)
from .reconciling import observed, wait_for

DATABASE = """\
apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  selector: {app: db}
  ports:
    - port: 5432
"""

#: Every object of the ingress controller and of cert-manager (apiVersion, kind, namespace, name).
INGRESS_OBJECTS = [
    ("v1", "Namespace", None, "ingress-nginx"),
    ("v1", "ServiceAccount", "ingress-nginx", "ingress-nginx"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", None, "ingress-nginx"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", None, "ingress-nginx"),
    ("v1", "ConfigMap", "ingress-nginx", "ingress-nginx-controller"),
    ("apps/v1", "Deployment", "ingress-nginx", "ingress-nginx-controller"),
    ("v1", "Service", "ingress-nginx", "ingress-nginx-controller"),
    ("networking.k8s.io/v1", "IngressClass", None, "threeport"),
]
CONTROLLER = "/apis/apps/v1/namespaces/ingress-nginx/deployments/ingress-nginx-controller"
CERT_MANAGER = "/apis/apps/v1/namespaces/cert-manager/deployments/cert-manager"
#: Kinds the supporting services are made of (to look for anything left with their label).
SUPPORT_KINDS = sorted(
    {(api_version, kind) for api_version, kind, _, _ in INGRESS_OBJECTS}
    | {("apiextensions.k8s.io/v1", "CustomResourceDefinition"), ("cert-manager.io/v1", "ClusterIssuer")}
)


# Fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture
def reconciling(database, broker, prefix, monkeypatch):
    """The reconcile actor on the workloads, kubernetes and gateways queues, with short backoffs, in a worker."""
    monkeypatch.setattr(kubernetes_runtimes, "RETRY_POLICY", RetryPolicy(attempts=2, initial=0.01, ceiling=0.05))
    monkeypatch.setattr(workload_instances, "HEALTH_POLL", 0.2)
    monkeypatch.setattr(actor, "DEPENDENCY_BACKOFF", (0.2, 0.5))
    locks = LockManager(connection=broker.connection, bucket=f"locks_{prefix}")
    declare_actors(broker, ["workloads", "kubernetes", "gateways"], locks=locks, min_backoff=200, max_backoff=1000)
    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()
    locks.delete_bucket()
    kubernetes_runtimes.forget_clusters()


def deployed(kube, broker, runtime, name: str = "web", yaml: str = WEB) -> WorkloadInstance:
    """A healthy instance of ``yaml`` on ``runtime``."""
    return deploy(StandIn(kube), broker, runtime, name=name, yaml=yaml)


def labelled(kube, component: str) -> list[str]:
    """Every live object labelled as part of ``component``."""
    found = []
    for api_version, kind in SUPPORT_KINDS:
        for name in kube.names(api_version, kind):
            namespace, _, short = name.rpartition("/")
            live = kube.live(api_version, kind, namespace or None, short)
            if (live["metadata"].get("labels") or {}).get(COMPONENT_LABEL) == component:
                found.append(f"{kind}/{name}")
    return found


def path_of(api_version: str, kind: str, namespace: Optional[str], name: str) -> str:
    """The URL path of an object."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{where}/{RESOURCES[(api_version, kind)][0]}/{name}"


def patches(kube, path: str) -> int:
    return sum(1 for method, p in kube.requests() if method == "PATCH" and p == path)


def saying(model, obj_id, text: str) -> Optional[Any]:
    current = store.get(model, obj_id)
    return current if text in current.status.get("message", "") else None


# Gateways ---------------------------------------------------------------------------------------


def test_a_gateway_installs_the_ingress_controller_and_routes_its_host_to_the_service(kube, broker, reconciling):
    # Given a deployed workload with a Service 'web', and a domain
    workload = deployed(kube, broker, runtime_for(kube.url))
    namespace = workload.status["namespace"]
    example = domain(broker)

    # When a gateway with a plain and a TLS port under www.example.com is put in front of it
    ports = [{"port": 80, "path": "/", "https_redirect": True}, {"port": 443, "path": "/", "tls_enabled": True}]
    definition = gateway_definition(broker, http_ports=ports, sub_domain="www", domain_name_definition_id=example.id)
    done = gateway(broker, definition, workload)

    # Then the ingress controller is installed, pinned, labelled, with the IngressClass 'threeport'
    for api_version, kind, ns, name in INGRESS_OBJECTS:
        live = kube.live(api_version, kind, ns, name)
        assert live is not None, (kind, name)
        assert live["metadata"]["labels"][COMPONENT_LABEL] == "ingress"
    controller = kube.live("apps/v1", "Deployment", "ingress-nginx", "ingress-nginx-controller")
    image = controller["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"registry.k8s.io/ingress-nginx/controller:{COMPONENTS['ingress'].version}"
    assert kube.live("networking.k8s.io/v1", "IngressClass", None, "threeport")["spec"] == {
        "controller": "k8s.io/ingress-nginx"
    }
    assert kube.live("v1", "Service", "ingress-nginx", "ingress-nginx-controller")["spec"]["type"] == "LoadBalancer"

    # And cert-manager, with Let's Encrypt staging and production issuers for the domain's admin
    assert kube.live("apps/v1", "Deployment", "cert-manager", "cert-manager") is not None
    for environment in ("staging", "production"):
        issuer = kube.live("cert-manager.io/v1", "ClusterIssuer", None, f"letsencrypt-{environment}-example.com")
        assert issuer["spec"]["acme"]["email"] == "admin@example.com"
        assert issuer["spec"]["acme"]["server"] == support_services.ACME_SERVERS[environment]

    # And an Ingress in the workload's namespace routes the host and path to the Service, with TLS
    name = f"web-{done.id.hex[:8]}"
    ingress = kube.live("networking.k8s.io/v1", "Ingress", namespace, name)
    assert ingress["metadata"]["labels"][GATEWAY_LABEL] == str(done.id)
    assert ingress["spec"]["ingressClassName"] == "threeport"
    assert ingress["spec"]["rules"] == [
        {
            "host": "www.example.com",
            "http": {
                "paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
                ]
            },
        }
    ]
    assert ingress["spec"]["tls"] == [{"hosts": ["www.example.com"], "secretName": f"{name}-tls"}]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt-production-example.com"
    assert annotations["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"

    # And the cluster's record says the workload needs both; the status says what the gateway does
    assert record(kube) == {"ingress": [str(workload.id)], "cert-manager": [str(workload.id)]}
    assert done.status["hosts"] == ["www.example.com"] and done.status["tls"] is True
    assert done.status["components"] == ["ingress", "cert-manager"]
    assert done.status["routes"] == [{"host": "www.example.com", "path": "/", "service": "web", "port": 80}]


def test_reconciling_a_gateway_again_writes_nothing(kube, broker, reconciling):
    # Given a reconciled gateway without a domain
    workload = deployed(kube, broker, runtime_for(kube.url))
    done = gateway(broker, gateway_definition(broker), workload)
    ingress = kube.live("networking.k8s.io/v1", "Ingress", workload.status["namespace"], f"web-{done.id.hex[:8]}")
    assert "host" not in ingress["spec"]["rules"][0] and "tls" not in ingress["spec"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-redirect"] == "false"
    before = len(kube.requests())

    # When it is reconciled again, unchanged
    publish_rows(broker, store.request_reconcile(GatewayInstance, [done.id]))
    wait_for(lambda: observed(GatewayInstance, done.id) and observed(GatewayInstance, done.id).generation == 2)

    # Then the cluster was only read
    after = kube.requests()[before:]
    assert after and {method for method, _ in after} == {"GET"}


def test_two_workloads_share_the_supporting_services_until_the_last_gateway_goes(kube, broker, reconciling):
    # Given two workloads on one cluster, each with a TLS gateway under a domain (the scenario's first act)
    shared = scenarios.two_gateways_share_the_supporting_services(StandIn(kube), broker)

    # Then the ingress controller and cert-manager were applied once
    assert patches(kube, CONTROLLER) == 1 and patches(kube, CERT_MANAGER) == 1
    assert kube.versions("apps/v1", "Deployment", "ingress-nginx", "ingress-nginx-controller") == 1
    assert len(kube.names("networking.k8s.io/v1", "Ingress")) == 2

    # When the gateways are deleted, the last one taking the supporting services along (the second act)
    mark = len(kube.requests())
    scenarios.the_supporting_services_go_with_the_last_gateway(StandIn(kube), broker, shared)

    # Then the workloads' namespaces and the record's stay, and the ingress controller went in reverse order
    assert labelled(kube, "ingress") == [] and labelled(kube, "cert-manager") == []
    assert kube.names("v1", "Namespace") == sorted(
        ["default", "kube-system", "threeport-system", shared.shop.status["namespace"], shared.blog.status["namespace"]]
    )
    expected = [path_of(*obj) for obj in reversed(INGRESS_OBJECTS)]
    deletes = [path for method, path in kube.requests()[mark:] if method == "DELETE" and path in expected]
    assert deletes == expected


def test_tcp_ports_are_exposed_through_the_ingress_controller(kube, broker, reconciling):
    # Given a workload with a database Service
    workload = deployed(kube, broker, runtime_for(kube.url), yaml=WEB + "---\n" + DATABASE)
    namespace = workload.status["namespace"]

    # When a gateway opens its TCP port 5432
    definition = gateway_definition(broker, "db", http_ports=[], tcp_ports=[{"port": 5432}], service_name="db")
    done = gateway(broker, definition, workload, "db")

    # Then ingress-nginx's TCP services ConfigMap forwards the port, and a LoadBalancer Service opens it
    tcp = kube.live("v1", "ConfigMap", "ingress-nginx", "tcp-services")
    assert tcp["data"] == {"5432": f"{namespace}/db:5432"}
    service = kube.live("v1", "Service", "ingress-nginx", f"db-{done.id.hex[:8]}-tcp")
    assert service["spec"]["ports"] == [{"name": "tcp-5432", "port": 5432, "targetPort": 5432, "protocol": "TCP"}]
    assert service["metadata"]["labels"][GATEWAY_LABEL] == str(done.id)
    assert kube.names("networking.k8s.io/v1", "Ingress") == []
    (port,) = done.status["tcp"]
    assert port["port"] == 5432 and port["target"] == f"{namespace}/db:5432"
    assert port["exposed"].startswith("exposed through the ingress controller's TCP services ConfigMap")

    # When the gateway is deleted, then the port is closed and the ingress controller goes with its last user
    delete(broker, GatewayInstance, done.id)
    assert kube.live("v1", "Namespace", None, "ingress-nginx") is None and record(kube) == {}


def test_an_unreachable_cluster_makes_the_gateway_wait_not_fail(kube, broker, reconciling):
    # Given a deployed workload whose cluster then fails every request about the supporting services
    workload = deployed(kube, broker, runtime_for(kube.url))
    kube.fail(503, times=10_000, path="threeport-system", message="the API server is restarting")

    # When a gateway is put in front of it
    fields = {
        "name": "web",
        "gateway_definition_id": gateway_definition(broker).id,
        "workload_instance_id": workload.id,
    }
    obj = create(broker, GatewayInstance, fields)

    # Then it waits, saying why, without failing
    waiting = wait_for(lambda: saying(GatewayInstance, obj.id, "restarting"))
    assert waiting.status["phase"] == "Waiting" and not waiting.creation_failed and not waiting.reconciled

    # When the API server is back, then it reconciles
    kube.clear_faults()
    done = wait_for(lambda: observed(GatewayInstance, obj.id))
    assert done.status["phase"] == "Reconciled" and record(kube) == {"ingress": [str(workload.id)]}


# Domain names -----------------------------------------------------------------------------------


def test_domain_names_install_external_dns_filtered_to_every_domain_in_use(kube, broker, reconciling):
    # Given two workloads on one cluster, the first with a gateway at www.example.com
    runtime = runtime_for(kube.url)
    shop, blog = deployed(kube, broker, runtime, "shop"), deployed(kube, broker, runtime, "blog")
    example, other = domain(broker), domain(broker, "other", "example.org")
    gateway(broker, gateway_definition(broker, sub_domain="www", domain_name_definition_id=example.id), shop)

    # When each workload gets a domain name
    fields = {"domain_name_definition_id": example.id, "workload_instance_id": shop.id}
    first = reconciled(broker, DomainNameInstance, {"name": "shop", **fields})
    fields = {"domain_name_definition_id": other.id, "workload_instance_id": blog.id}
    second = reconciled(broker, DomainNameInstance, {"name": "blog", **fields})

    # Then external-dns runs, pinned, for AWS public zones, filtered to both domains
    assert args(kube) == [
        "--source=service",
        "--source=ingress",
        "--domain-filter=example.com",
        "--domain-filter=example.org",
        "--provider=aws",
        "--policy=sync",
        "--registry=txt",
        f"--txt-owner-id=threeport-{runtime.id.hex[:8]}",
        "--aws-zone-type=public",
    ]
    assert image(kube) == f"registry.k8s.io/external-dns/external-dns:{COMPONENTS['external-dns'].version}"
    assert record(kube)["external-dns"] == sorted([str(shop.id), str(blog.id)])
    assert first.status["dns_names"] == ["www.example.com"] and second.status["dns_names"] == []

    # When the first domain name is deleted, then the filter keeps only the other domain
    delete(broker, DomainNameInstance, first.id)
    assert [arg for arg in args(kube) if arg.startswith("--domain-filter")] == ["--domain-filter=example.org"]
    assert kube.versions("apps/v1", "Deployment", "external-dns", "external-dns") == 3

    # When the last one is deleted, then external-dns is removed
    delete(broker, DomainNameInstance, second.id)
    assert labelled(kube, "external-dns") == [] and "external-dns" not in record(kube)
    assert kube.live("v1", "Namespace", None, "external-dns") is None


def args(kube) -> list[str]:
    live = kube.live("apps/v1", "Deployment", "external-dns", "external-dns")
    return live["spec"]["template"]["spec"]["containers"][0]["args"]


def image(kube) -> str:
    live = kube.live("apps/v1", "Deployment", "external-dns", "external-dns")
    return live["spec"]["template"]["spec"]["containers"][0]["image"]


# The record, from many workers at once ----------------------------------------------------------


def test_workers_racing_on_the_record_install_once_and_lose_no_user(kube, monkeypatch):
    # Given four workers, each with its own connection, not serialized by a process lock (as if in other processes)
    monkeypatch.setattr(support_services, "_serialized", lambda cluster: _nothing())
    clusters = [Cluster(Credentials(endpoint=kube.url), retry=RetryPolicy(attempts=2, initial=0.01)) for _ in range(4)]
    users = [f"user-{index}" for index in range(4)]

    # When each makes its user need the ingress controller at the same time
    run_together(lambda cluster, user: support_services.need(cluster, "ingress", user), clusters, users)

    # Then every user is recorded and the controller is installed, written once
    assert record(kube) == {"ingress": users}
    assert kube.versions("apps/v1", "Deployment", "ingress-nginx", "ingress-nginx-controller") == 1

    # When they all release it at the same time, then nothing of it is left
    run_together(lambda cluster, user: support_services.release(cluster, "ingress", user), clusters, users)
    assert record(kube) == {} and labelled(kube, "ingress") == []
    for cluster in clusters:
        cluster.close()


def run_together(fn, clusters, users) -> None:
    """``fn(cluster, user)`` in a thread per pair, started together; again on a TemporaryError, as the actor would."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(clusters))

    def run(cluster, user) -> None:
        start.wait()
        try:
            for _ in range(10):
                try:
                    fn(cluster, user)
                    return
                except TemporaryError:
                    continue
            raise AssertionError(f"{user} kept being told to try again")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(clusters, users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
