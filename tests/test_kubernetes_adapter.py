"""The Kubernetes adapter: the real ``kubernetes`` client over real HTTP, against the API server stand-in.

Each test starts from an empty stand-in (two nodes, ``default`` and
``kube-system``); faults are injected by the stand-in before it touches
anything. Retries are made fast; their number is what is checked.
"""

from __future__ import annotations

import os
import stat

import kubernetes.client
import pytest
import yaml

from cli.local_servers import free_port
from tasks.errors import PermanentError, TemporaryError
from tasks.kubernetes_adapter import (
    Cluster,
    Credentials,
    KubernetesConflict,
    KubernetesNotFound,
    KubernetesPermanentError,
    KubernetesUnavailable,
    KubernetesUnknownKind,
    RetryPolicy,
)

from .kube import TlsMaterial

FAST = RetryPolicy(attempts=4, initial=0.01, ceiling=0.05, connect_timeout=2, read_timeout=10)


def config_map(name="web", namespace="default", data=None, labels=None) -> dict:
    metadata = {"name": name, "namespace": namespace, "labels": labels or {"app": name}}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data or {"colour": "blue"}}


@pytest.fixture
def cluster(kube):
    with Cluster(Credentials(endpoint=kube.url), retry=FAST) as cluster:
        yield cluster


def patches(kube) -> int:
    return sum(1 for method, _ in kube.requests() if method == "PATCH")


def test_the_cluster_says_its_version_and_node_count(kube, cluster):
    # Given the stand-in with two nodes, then the adapter reads both over HTTP
    assert cluster.server_version()["gitVersion"].startswith("v1.")
    assert cluster.node_count() == 2

    # And a third node is counted
    kube.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-3"}})
    assert cluster.node_count() == 3


def test_apply_creates_the_object_with_its_labels(kube, cluster):
    # When a ConfigMap is applied
    live = cluster.apply(config_map(labels={"app": "web", "threeport.io/workload-instance": "abc"}))

    # Then it exists in the cluster, labelled, with what the server adds
    stored = kube.live("v1", "ConfigMap", "default", "web")
    assert stored["metadata"]["labels"] == {"app": "web", "threeport.io/workload-instance": "abc"}
    assert stored["data"] == {"colour": "blue"}
    assert live["metadata"]["uid"] == stored["metadata"]["uid"]

    # And it went as a server-side apply with threeport's field manager, forced
    method, path = kube.requests()[-1]
    assert (method, path) == ("PATCH", "/api/v1/namespaces/default/configmaps/web")


def test_applying_the_same_object_again_writes_nothing(kube, cluster):
    # Given an applied Deployment
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
    }
    first = cluster.apply(deployment)

    # When it is applied again, unchanged
    second = cluster.apply(deployment)

    # Then the cluster wrote nothing: same resourceVersion, one version in its history
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert kube.versions("apps/v1", "Deployment", "default", "web") == 1

    # When a field is changed and another one left out, then both show (the manager's fields are its config)
    changed = {**deployment, "spec": {"replicas": 3}}
    third = cluster.apply(changed)
    assert third["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]
    assert kube.live("apps/v1", "Deployment", "default", "web")["spec"] == {"replicas": 3}


def test_delete_tolerates_an_object_that_is_gone(kube, cluster):
    # Given an applied ConfigMap
    cluster.apply(config_map())

    # When it is deleted twice, then the first delete found it and the second did not mind
    assert cluster.delete("v1", "ConfigMap", "web", "default") is True
    assert cluster.delete("v1", "ConfigMap", "web", "default") is False
    assert kube.live("v1", "ConfigMap", "default", "web") is None

    # And reading it is KubernetesNotFound (find says None)
    with pytest.raises(KubernetesNotFound):
        cluster.get("v1", "ConfigMap", "web", "default")
    assert cluster.find("v1", "ConfigMap", "web", "default") is None


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_a_conflict_or_a_server_error_is_retried_and_succeeds(kube, cluster, status):
    # Given the API server answers the next two applies with an error
    kube.fail(status, times=2, method="PATCH")

    # When a ConfigMap is applied, then it succeeds on the third attempt
    cluster.apply(config_map())
    assert kube.live("v1", "ConfigMap", "default", "web")["data"] == {"colour": "blue"}
    assert patches(kube) == 3 and kube.pending_faults() == 0


def test_an_error_that_lasts_is_unavailable_after_the_retries(kube, cluster):
    # Given the API server answers every apply with 503 for longer than the retries last
    kube.fail(503, times=10, method="PATCH", message="etcd is down")

    # When a ConfigMap is applied, then the adapter gives up with a temporary error saying why
    with pytest.raises(KubernetesUnavailable) as raised:
        cluster.apply(config_map())
    assert isinstance(raised.value, TemporaryError) and raised.value.status == 503
    assert "etcd is down" in raised.value.message and "4 attempts" in raised.value.message
    assert patches(kube) == FAST.attempts


def test_an_unreachable_cluster_is_unavailable():
    # Given an endpoint nothing listens on
    with Cluster(Credentials(endpoint=f"http://127.0.0.1:{free_port()}"), retry=FAST) as cluster:
        # When it is asked anything, then it is a temporary error: the object will be requeued
        with pytest.raises(KubernetesUnavailable) as raised:
            cluster.server_version()
    assert isinstance(raised.value, TemporaryError) and "cannot reach the cluster" in raised.value.message


def test_rejected_credentials_are_a_permanent_error(kube):
    # Given an API server that wants a bearer token
    kube.require_token("right-token")

    # When the adapter comes with the wrong one, then it fails permanently, at once, naming the reason
    with Cluster(Credentials(endpoint=kube.url, token="wrong-token"), retry=FAST) as cluster:
        with pytest.raises(KubernetesPermanentError) as raised:
            cluster.node_count()
    assert isinstance(raised.value, PermanentError) and raised.value.status == 401
    assert "rejects the credentials" in raised.value.message
    assert len(kube.requests()) == 1

    # And with the right one it works
    with Cluster(Credentials(endpoint=kube.url, token="right-token"), retry=FAST) as cluster:
        assert cluster.node_count() == 2


def test_an_invalid_object_is_a_permanent_error_naming_the_reason(cluster):
    # When an object with an invalid name is applied, then the server's 422 reason is the message
    with pytest.raises(KubernetesPermanentError) as raised:
        cluster.apply(config_map(name="Not_A_Name"))
    assert raised.value.status == 422 and raised.value.reason == "Invalid"
    assert "metadata.name: Invalid value" in raised.value.message

    # And a kind the cluster does not serve is permanent too
    with pytest.raises(KubernetesUnknownKind):
        cluster.apply({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


def test_objects_are_listed_by_label_selector(cluster):
    # Given three ConfigMaps, two of one app
    cluster.ensure_namespace("other")
    cluster.apply(config_map("a", labels={"app": "shop", "tier": "web"}))
    cluster.apply(config_map("b", namespace="other", labels={"app": "shop", "tier": "db"}))
    cluster.apply(config_map("c", labels={"app": "blog"}))

    # Then selectors pick them out, in one namespace or all
    names = lambda **kw: sorted(o["metadata"]["name"] for o in cluster.list("v1", "ConfigMap", **kw))  # noqa: E731
    assert names(label_selector="app=shop") == ["a", "b"]
    assert names(label_selector="app=shop", namespace="default") == ["a"]
    assert names(label_selector="app=shop,tier!=db") == ["a"]
    assert names(label_selector="tier in (db,cache)") == ["b"]
    assert names(label_selector="!tier") == ["c"]
    assert all(o["kind"] == "ConfigMap" for o in cluster.list("v1", "ConfigMap"))


def test_a_namespace_is_made_once(kube, cluster):
    # When a namespace is ensured twice, then it is made the first time only
    assert cluster.ensure_namespace("shop", labels={"owner": "test"}) is True
    assert cluster.ensure_namespace("shop") is False
    assert kube.live("v1", "Namespace", None, "shop")["metadata"]["labels"] == {"owner": "test"}

    # And a second create of it is a conflict, not retried
    with pytest.raises(KubernetesConflict):
        cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})


def test_a_kubeconfig_reaches_its_cluster_without_touching_the_global_configuration(kube):
    # Given a kubeconfig for the stand-in, with a token the stand-in wants
    kube.require_token("from-kubeconfig")
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stand-in", "cluster": {"server": kube.url}}],
        "users": [{"name": "tester", "user": {"token": "from-kubeconfig"}}],
        "contexts": [{"name": "test", "context": {"cluster": "stand-in", "user": "tester"}}],
        "current-context": "test",
    }
    before = kubernetes.client.Configuration.get_default_copy().host

    # When the adapter connects with it, then it works, and the process-wide configuration is untouched
    with Cluster(Credentials(kubeconfig=yaml.safe_dump(kubeconfig)), retry=FAST) as cluster:
        assert cluster.node_count() == 2
    assert kubernetes.client.Configuration.get_default_copy().host == before

    # And a broken kubeconfig is a permanent error
    with pytest.raises(KubernetesPermanentError, match="invalid kubeconfig"):
        Cluster(Credentials(kubeconfig="clusters: []\n"), retry=FAST)


def test_a_token_source_is_asked_for_every_request(kube):
    # Given a token source (as EKS tokens will be), and a stand-in that wants its token
    kube.require_token("token-1")
    issued = []

    def source() -> str:
        issued.append(f"token-{len(issued) + 1}")
        return "token-1"

    # When two requests are made, then the source was asked each time
    with Cluster(Credentials(endpoint=kube.url, token_source=source), retry=FAST) as cluster:
        cluster.server_version()
        cluster.node_count()
    assert len(issued) >= 2


def test_a_tls_cluster_is_reached_with_its_ca_and_a_client_certificate(kube_tls):
    # Given a stand-in over HTTPS that demands a client certificate signed by its CA
    api, tls = kube_tls
    api.reset()
    credentials = Credentials(
        endpoint=api.url,
        ca_certificate=tls.ca,
        client_certificate=tls.client_certificate,
        client_key=tls.client_key,
    )

    # When the adapter connects with the CA and the client certificate, then it works
    cluster = Cluster(credentials, retry=FAST)
    assert cluster.node_count() == 2
    files = cluster._files.directory
    assert sorted(os.listdir(files)) == ["ca.crt", "client.crt", "client.key"]
    assert stat.S_IMODE(os.stat(os.path.join(files, "client.key")).st_mode) == 0o600

    # And closing it removes the files the client read the key and certificates from
    cluster.close()
    assert not os.path.exists(files)


def test_a_tls_cluster_with_another_ca_is_a_permanent_error(kube_tls):
    # Given the CA of another cluster
    api, tls = kube_tls
    other = TlsMaterial.generate()
    credentials = Credentials(
        endpoint=api.url,
        ca_certificate=other.ca,
        client_certificate=tls.client_certificate,
        client_key=tls.client_key,
    )

    # When the adapter connects, then the server's certificate is refused, permanently
    with Cluster(credentials, retry=FAST) as cluster:
        with pytest.raises(KubernetesPermanentError, match="TLS failed"):
            cluster.server_version()
