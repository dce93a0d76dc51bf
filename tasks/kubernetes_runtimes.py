"""The KubernetesRuntimeInstance reconciler: reach the cluster and record what it is.

:func:`connect` is how every reconciler reaches a runtime's cluster: with
its kubeconfig, or its endpoint, CA and token or client certificate. A
runtime the control plane built on EKS has only an endpoint and a CA; its
``AwsEksKubernetesRuntimeInstance`` status says how to authenticate
(``auth.method``, e.g. ``aws-iam``) and a token source registered for that
method (:func:`register_token_source`) makes the tokens: ``aws-iam`` tokens
are presigned with the EKS instance's account (as ``aws eks get-token``). A
``connection_token`` or a ``kubeconfig`` on the runtime takes precedence.

Reconciling records ``server_version`` and ``node_count`` in the status. An
unreachable cluster is a :class:`~tasks.errors.TemporaryError` (the actor
backs off), rejected credentials a permanent failure. Deleting removes
nothing in the cluster.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Optional

from models import store
from models.aws import AwsAccount, AwsEksKubernetesRuntimeDefinition, AwsEksKubernetesRuntimeInstance
from models.kubernetes import KubernetesRuntimeDefinition, KubernetesRuntimeInstance

from .aws_adapter import Aws
from .errors import PermanentError, TemporaryError
from .kubernetes_adapter import Cluster, Credentials, KubernetesPermanentError, RetryPolicy, TokenSource
from .reconcilers import Reconciler, register

__all__ = [
    "connect",
    "credentials_of",
    "register_token_source",
    "forget_clusters",
    "reconcile_runtime",
    "RETRY_POLICY",
]

#: How calls to clusters are retried (tests make it shorter).
RETRY_POLICY = RetryPolicy()
#: Clusters kept connected (by credentials), so a reconcile does not rediscover the API each time.
_CACHE_SIZE = 32

#: Makes a token source for an EKS runtime, chosen by its status's ``auth["method"]``.
TokenSourceFactory = Callable[[AwsEksKubernetesRuntimeInstance], TokenSource]
_token_sources: dict[str, TokenSourceFactory] = {}
_clusters: "OrderedDict[str, Cluster]" = OrderedDict()
_clusters_lock = threading.Lock()


def register_token_source(method: str, factory: TokenSourceFactory) -> None:
    """Have runtimes whose EKS status says ``auth.method == method`` authenticate with ``factory(eks)()`` tokens."""
    _token_sources[method] = factory


def credentials_of(runtime: KubernetesRuntimeInstance) -> Credentials:
    """How to reach ``runtime``'s cluster.

    TemporaryError while an EKS cluster has not filled in its endpoint yet;
    PermanentError when the runtime gives no way in.
    """
    if runtime.kubeconfig:
        return Credentials(kubeconfig=runtime.kubeconfig)
    eks = _eks_cluster_of(runtime)
    if not runtime.api_endpoint:
        if eks is not None:
            raise TemporaryError(f"waiting for EKS cluster {eks.name!r} to fill in the API endpoint", delay=None)
        raise PermanentError("the runtime gives neither api_endpoint nor kubeconfig: nothing to connect to")
    credentials = {
        "endpoint": runtime.api_endpoint,
        "ca_certificate": runtime.ca_certificate,
        "token": runtime.connection_token,
        "client_certificate": runtime.certificate,
        "client_key": runtime.certificate_key,
    }
    if not runtime.connection_token and not runtime.certificate and eks is not None:
        credentials["token_source"] = _token_source_for(eks)
    return Credentials(**credentials)


def connect(runtime: KubernetesRuntimeInstance) -> Cluster:
    """A :class:`Cluster` for ``runtime`` (the same one again while its credentials are the same)."""
    credentials = credentials_of(runtime)
    key = f"{runtime.id}:{credentials.fingerprint()}"
    with _clusters_lock:
        cluster = _clusters.get(key)
        if cluster is not None and cluster.retry == RETRY_POLICY:
            _clusters.move_to_end(key)
            return cluster
    cluster = Cluster(credentials, retry=RETRY_POLICY)
    with _clusters_lock:
        for stale in [k for k in _clusters if k.startswith(f"{runtime.id}:")]:  # the runtime's old credentials
            del _clusters[stale]
        _clusters[key] = cluster
        while len(_clusters) > _CACHE_SIZE:
            _clusters.popitem(last=False)
    return cluster


def forget_clusters(runtime_id: Optional[Any] = None) -> None:
    """Drop the cached clusters (of one runtime, or all).

    A dropped cluster is not closed here: a reconcile in another thread may
    still use it. It closes (connections, key files) once nobody holds it.
    """
    with _clusters_lock:
        for key in [k for k in _clusters if runtime_id is None or k.startswith(f"{runtime_id}:")]:
            del _clusters[key]


def reconcile_runtime(runtime: KubernetesRuntimeInstance) -> None:
    """Reach the cluster and record its version and node count in the status."""
    cluster = connect(runtime)
    version = cluster.server_version()
    nodes = cluster.node_count()
    store.merge_status(
        KubernetesRuntimeInstance,
        runtime.id,
        {
            "server_version": version.get("gitVersion") or f"v{version.get('major')}.{version.get('minor')}",
            "platform": version.get("platform"),
            "node_count": nodes,
            "api_endpoint": cluster.endpoint,
        },
    )


def delete_runtime(runtime: KubernetesRuntimeInstance) -> None:
    """Nothing to remove in the cluster: forget the connection."""
    forget_clusters(runtime.id)


def _eks_cluster_of(runtime: KubernetesRuntimeInstance) -> Optional[AwsEksKubernetesRuntimeInstance]:
    """The EKS cluster that fills this runtime in, if the control plane built it there."""
    definition = KubernetesRuntimeDefinition.get_or_none(
        KubernetesRuntimeDefinition.id == runtime.kubernetes_runtime_definition_id
    )
    if definition is None or definition.infra_provider != "eks":
        return None
    found, _ = store.list_objects(
        AwsEksKubernetesRuntimeInstance, filters={"kubernetes_runtime_instance_id": runtime.id}, limit=1
    )
    return found[0] if found else None


def _token_source_for(eks: AwsEksKubernetesRuntimeInstance) -> TokenSource:
    auth = (eks.status or {}).get("auth") or {}
    method = auth.get("method")
    factory = _token_sources.get(method or "")
    if factory is None:
        raise KubernetesPermanentError(
            f"EKS cluster {eks.name!r} is reached with {method or 'unknown'!s} tokens, which the control plane "
            "cannot make yet: give the runtime a connection_token or a kubeconfig"
        )
    return factory(eks)


def _iam_tokens(eks: AwsEksKubernetesRuntimeInstance) -> TokenSource:
    """Bearer tokens for the cluster, presigned with its account's credentials (``aws eks get-token``)."""
    auth = (eks.status or {}).get("auth") or {}
    definition = store.get(AwsEksKubernetesRuntimeDefinition, eks.aws_eks_kubernetes_runtime_definition_id)
    aws = Aws.for_account(store.get(AwsAccount, definition.aws_account_id), region=auth.get("region"))
    cluster = auth["cluster_name"]
    return lambda: aws.eks_token(cluster)


register_token_source("aws-iam", _iam_tokens)
register(KubernetesRuntimeInstance.kind, Reconciler(reconcile=reconcile_runtime, delete=delete_runtime))
