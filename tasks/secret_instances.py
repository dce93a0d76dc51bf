"""The SecretInstance reconciler: a SecretDefinition's values in a Kubernetes Secret of its workload's namespace.

The External Secrets Operator does the copying. The instance is a user of
the ``external-secrets`` supporting service on its cluster (its own
runtime, else its workload's: :func:`tasks.gateways.serving_runtime`), so
the operator is installed with the first SecretInstance there and removed
after the last (:mod:`tasks.support_services`). The instance applies a
store for the definition's account and region, pointing at Secrets
Manager, and, in the workload's namespace, an ExternalSecret that extracts
every key of the definition's secret into a Secret named after the instance
(``status.secret_name``). The ExternalSecret's ``force-sync`` annotation is
the secret's version, so a new value is fetched at once rather than at the
next refresh.

On an EKS cluster built in the secret's account the store is a SecretStore
in the workload's namespace that authenticates with IRSA, as a
ServiceAccount beside it whose IAM role may read only this secret and may be
assumed only by that ServiceAccount (:mod:`tasks.aws_irsa`). Elsewhere it is
a ClusterSecretStore that serves the workload's namespace only, reading the
account's access keys from a Secret in the operator's namespace (so they are
never in the workload's), or, for an account with a role and no keys,
assuming the role with the operator's own credentials.

What it applies carries :data:`SECRET_LABEL` and is recorded in the status
before it is applied, so deleting the instance removes exactly that (and the
Secret the operator made, which carries the label too), then its IAM role,
then releases the supporting service.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Optional

from models import store
from models.aws import AwsAccount
from models.kubernetes import KubernetesRuntimeInstance
from models.secrets_storage import SecretDefinition, SecretInstance
from models.workloads import WorkloadInstance

from . import aws_irsa, support_services
from .aws_adapter import Aws, tags_for
from .errors import DependencyNotReady, PermanentError, TemporaryError
from .gateways import serving_runtime
from .kubernetes_adapter import Cluster, KubernetesUnknownKind
from .kubernetes_runtimes import connect
from .reconcilers import Reconciler, register
from .support_components import EXTERNAL_SECRETS_API, EXTERNAL_SECRETS_NAMESPACE, MANAGED_LABELS

__all__ = [
    "reconcile_secret_instance",
    "delete_secret_instance",
    "kubernetes_secret_name",
    "SECRET_LABEL",
    "COMPONENT",
    "ROLE_POLICY_NAME",
]

#: The label tying an object to its SecretInstance (the value is the instance's id).
SECRET_LABEL = "threeport.io/secret-instance"
_ANNOTATION_NAME = "threeport.io/secret-instance-name"
#: The supporting service that copies the values.
COMPONENT = "external-secrets"
#: How often the operator fetches the value again by itself.
REFRESH_INTERVAL = "1h"
#: The IRSA role's inline policy: reading the one secret.
ROLE_POLICY_NAME = "threeport-secret-read"
_READ_ACTIONS = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
#: The kinds an instance makes (where its label is looked for when tearing down).
_KINDS = [
    (EXTERNAL_SECRETS_API, "ExternalSecret"),
    (EXTERNAL_SECRETS_API, "SecretStore"),
    (EXTERNAL_SECRETS_API, "ClusterSecretStore"),
    ("v1", "ServiceAccount"),
    ("v1", "Secret"),
]


def kubernetes_secret_name(instance: SecretInstance) -> str:
    """The Secret the workload reads: the instance's name, lowercase, with what a name cannot hold replaced by '-'."""
    return re.sub(r"[^a-z0-9-]+", "-", instance.name.lower()).strip("-")[:253].strip("-") or _base_name(instance)


def _base_name(instance: SecretInstance) -> str:
    """``<name>-<8 hex of the id>``: the SecretStore's, the ServiceAccount's and the access keys' Secret's."""
    slug = re.sub(r"[^a-z0-9-]+", "-", instance.name.lower()).strip("-")[:40].strip("-") or "secret"
    return f"{slug}-{instance.id.hex[:8]}"


def _role_name(instance: SecretInstance) -> str:
    """The IRSA role: ``threeport-secret-<name>-<12 hex of the id>``, within IAM's 64 characters."""
    slug = re.sub(r"[^a-z0-9-]+", "-", instance.name.lower()).strip("-")[:30].strip("-") or "secret"
    return f"threeport-secret-{slug}-{instance.id.hex[:12]}"


# Reconcile --------------------------------------------------------------------------------------


def reconcile_secret_instance(instance: SecretInstance) -> None:
    """Have the operator on the workload's cluster copy the definition's values into the workload's namespace."""
    definition = store.get(SecretDefinition, instance.secret_definition_id)
    remote = (definition.status or {}).get("inventory") or {}
    if not remote.get("arn"):
        raise DependencyNotReady(f"waiting for SecretDefinition {definition.name!r} to make its secret")
    account = AwsAccount.get_or_none(AwsAccount.id == remote["account_id"])
    if account is None:
        raise PermanentError(f"the AwsAccount that keeps SecretDefinition {definition.name!r} is gone")
    workload = store.get(WorkloadInstance, instance.workload_instance_id)
    namespace = (workload.status or {}).get("namespace")
    if not namespace:
        raise TemporaryError(f"waiting for WorkloadInstance {workload.name!r} to record its namespace", delay=None)
    runtime = serving_runtime(instance)
    status = dict(instance.status or {})
    if status.get("runtime_id") not in (None, str(runtime.id)):  # moved to another cluster: leave the old one
        _tear_down(instance, status)
        status = {}
    issuer = _irsa_issuer(runtime, account)
    role = _planned_role(instance, status.get("role"), account, remote["region"]) if issuer else None
    if status.get("role") and status["role"] != role:  # no longer IRSA, or in another account
        _delete_role(status["role"])
    store.merge_status(SecretInstance, instance.id, {"runtime_id": str(runtime.id), "role": role})
    cluster = connect(runtime)
    support_services.need(cluster, COMPONENT, str(instance.id))
    role_arn = None
    if role is not None:
        role_arn = _ensure_role(account, role, instance, issuer=issuer, namespace=namespace, secret_arn=remote["arn"])
    objects = _objects(instance, definition, account, namespace=namespace, role_arn=role_arn)
    refs = [_ref(obj) for obj in objects]
    leftovers = [ref for ref in status.get("objects") or [] if ref not in refs]
    store.merge_status(SecretInstance, instance.id, {"objects": refs + leftovers})
    _apply(cluster, objects)
    for ref in reversed(leftovers):
        _delete(cluster, ref)
    store.merge_status(SecretInstance, instance.id, _report(cluster, instance, remote, namespace, refs, role))


def delete_secret_instance(instance: SecretInstance) -> None:
    """Remove what the instance made on its cluster and in IAM, then release the supporting service."""
    status = instance.status or {}
    if status.get("runtime_id") or status.get("role"):
        _tear_down(instance, status)


def _planned_role(
    instance: SecretInstance, recorded: Optional[dict[str, str]], account: AwsAccount, region: str
) -> dict[str, str]:
    """The IRSA role to use: the one recorded when it is in the same account (a rename keeps it), else a new one."""
    if recorded and recorded.get("account_id") == str(account.id):
        return recorded
    return {"name": _role_name(instance), "account_id": str(account.id), "region": region}


def _irsa_issuer(runtime: KubernetesRuntimeInstance, account: AwsAccount) -> Optional[str]:
    """The OIDC issuer of the runtime's EKS cluster when IRSA can reach the secret: the cluster is active and
    built in the secret's account (a role trusts only its own account's OIDC providers)."""
    eks = aws_irsa.eks_cluster_of(runtime.id)
    if eks is None or aws_irsa.aws_of(eks)[1].id != account.id:
        return None
    return aws_irsa.oidc_issuer(eks)


def _ensure_role(
    account: AwsAccount,
    role: dict[str, str],
    instance: SecretInstance,
    *,
    issuer: str,
    namespace: str,
    secret_arn: str,
) -> str:
    """The IAM role the instance's ServiceAccount assumes through the cluster's OIDC provider, reading only the
    secret (:mod:`tasks.aws_irsa`): its ARN."""
    aws = Aws.for_account(account, region=role["region"])
    subject = aws_irsa.service_account_subject(namespace, _base_name(instance))
    trust = aws_irsa.web_identity_trust(
        issuer=issuer, subject=subject, account_id=account.account_id, region=aws.region
    )
    arn = aws_irsa.ensure_role(
        aws,
        role["name"],
        trust=trust,
        tags=tags_for(instance, Name=role["name"]),
        description=f"Reads the secret of threeport SecretInstance {instance.name!r}."[:1000],
    )
    read = aws_irsa.policy_document({"Effect": "Allow", "Action": _READ_ACTIONS, "Resource": secret_arn})
    aws_irsa.ensure_inline_policy(aws, role["name"], ROLE_POLICY_NAME, read)
    return arn


def _delete_role(role: dict[str, str]) -> None:
    account = AwsAccount.get_or_none(AwsAccount.id == role.get("account_id"))
    if account is not None:
        aws_irsa.delete_role(Aws.for_account(account, region=role.get("region")), role["name"], (ROLE_POLICY_NAME,))


# What is applied --------------------------------------------------------------------------------


def _objects(
    instance: SecretInstance,
    definition: SecretDefinition,
    account: AwsAccount,
    *,
    namespace: str,
    role_arn: Optional[str],
) -> list[dict[str, Any]]:
    """What is applied, in order: how the operator reaches AWS, the store, and the ExternalSecret."""
    remote = definition.status["inventory"]
    provider: dict[str, Any] = {"service": "SecretsManager", "region": remote["region"]}
    if role_arn is not None:
        objects = _irsa_store(instance, namespace, provider, role_arn)
    else:
        objects = _cluster_store(instance, namespace, provider, account)
    target = kubernetes_secret_name(instance)
    labels, annotations = _labels(instance), {_ANNOTATION_NAME: instance.name}
    version = (definition.status or {}).get("version_id") or ""
    spec = {
        "refreshInterval": REFRESH_INTERVAL,
        "secretStoreRef": {"kind": objects[-1]["kind"], "name": objects[-1]["metadata"]["name"]},
        "target": {
            "name": target,
            "creationPolicy": "Owner",
            "template": {"metadata": {"labels": labels, "annotations": annotations}},
        },
        "dataFrom": [{"extract": {"key": remote["name"]}}],
    }
    metadata = _metadata(instance, target, namespace, **{"force-sync": version})
    return objects + [
        {"apiVersion": EXTERNAL_SECRETS_API, "kind": "ExternalSecret", "metadata": metadata, "spec": spec}
    ]


def _irsa_store(
    instance: SecretInstance, namespace: str, provider: dict[str, Any], role_arn: str
) -> list[dict[str, Any]]:
    """A ServiceAccount that assumes the role, and a SecretStore beside it that authenticates as it."""
    base = _base_name(instance)
    account = _metadata(instance, base, namespace, **{"eks.amazonaws.com/role-arn": role_arn})
    provider = {**provider, "auth": {"jwt": {"serviceAccountRef": {"name": base}}}}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": account},
        {
            "apiVersion": EXTERNAL_SECRETS_API,
            "kind": "SecretStore",
            "metadata": _metadata(instance, base, namespace),
            "spec": {"provider": {"aws": provider}},
        },
    ]


def _cluster_store(
    instance: SecretInstance, namespace: str, provider: dict[str, Any], account: AwsAccount
) -> list[dict[str, Any]]:
    """The account's access keys in a Secret of the operator's namespace (never the workload's), and a
    ClusterSecretStore that reads them and serves the workload's namespace only."""
    base, objects, provider = _base_name(instance), [], dict(provider)
    if account.access_key_id:
        keys = {"access-key-id": account.access_key_id, "secret-access-key": account.secret_access_key}
        data = {key: base64.b64encode(value.encode()).decode() for key, value in keys.items()}
        metadata = _metadata(instance, f"{base}-aws", EXTERNAL_SECRETS_NAMESPACE)
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque", "data": data})
        ref = {"name": f"{base}-aws", "namespace": EXTERNAL_SECRETS_NAMESPACE}
        provider["auth"] = {
            "secretRef": {
                "accessKeyIDSecretRef": {**ref, "key": "access-key-id"},
                "secretAccessKeySecretRef": {**ref, "key": "secret-access-key"},
            }
        }
    if account.role_arn:
        provider["role"] = account.role_arn
        if account.external_id:
            provider["externalID"] = account.external_id
    only_here = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    store_object = {
        "apiVersion": EXTERNAL_SECRETS_API,
        "kind": "ClusterSecretStore",
        "metadata": _metadata(instance, base, None),
        "spec": {"conditions": [only_here], "provider": {"aws": provider}},
    }
    return objects + [store_object]


def _labels(instance: SecretInstance) -> dict[str, str]:
    return {SECRET_LABEL: str(instance.id), **MANAGED_LABELS}


def _metadata(instance: SecretInstance, name: str, namespace: Optional[str], **annotations: str) -> dict[str, Any]:
    """An object's metadata: labelled and annotated as the instance's, in ``namespace`` (None: cluster-wide)."""
    metadata = {
        "name": name,
        "labels": _labels(instance),
        "annotations": {_ANNOTATION_NAME: instance.name, **annotations},
    }
    return metadata | ({"namespace": namespace} if namespace else {})


def _apply(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        try:
            cluster.apply(obj)
        except KubernetesUnknownKind as exc:
            if obj["apiVersion"] != EXTERNAL_SECRETS_API:
                raise
            raise TemporaryError(
                f"waiting for the cluster to serve {obj['kind']} ({COMPONENT}'s CRDs were just applied)", delay=5.0
            ) from exc


def _report(
    cluster: Cluster,
    instance: SecretInstance,
    remote: dict[str, Any],
    namespace: str,
    refs: list[dict[str, Any]],
    role: Optional[dict[str, str]],
) -> dict[str, Any]:
    """What the status says: where the Secret is, what it is made from, how the operator authenticates."""
    name = kubernetes_secret_name(instance)
    live = cluster.find(EXTERNAL_SECRETS_API, "ExternalSecret", name, namespace) or {}
    conditions = (live.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if role is not None:
        auth = f"IRSA: ServiceAccount {namespace}/{_base_name(instance)} assumes IAM role {role['name']}"
    elif any(ref["kind"] == "Secret" for ref in refs):
        auth = f"the AWS account's access keys, in Secret {EXTERNAL_SECRETS_NAMESPACE}/{_base_name(instance)}-aws"
    else:
        auth = "the AWS account's role, assumed with the operator's own credentials"
    return {
        "secret_name": name,
        "namespace": namespace,
        "remote_key": remote["name"],
        "region": remote["region"],
        "auth": auth,
        "role": role,
        "synced": (ready or {}).get("status"),
        "sync_message": (ready or {}).get("message"),
    }


# Tearing down -----------------------------------------------------------------------------------


def _tear_down(instance: SecretInstance, status: dict[str, Any]) -> None:
    """Remove what the instance made on the cluster its status names and its IAM role; release the service."""
    runtime = None
    if status.get("runtime_id"):
        runtime = KubernetesRuntimeInstance.get_or_none(KubernetesRuntimeInstance.id == status["runtime_id"])
    if runtime is not None:  # else the cluster is gone from the control plane: nothing left to reach
        cluster = connect(runtime)
        refs = status.get("objects") or []
        for ref in reversed(refs):
            _delete(cluster, ref)
        _delete_labelled(cluster, instance)
        support_services.release(cluster, COMPONENT, str(instance.id))
    if status.get("role"):
        _delete_role(status["role"])
    store.merge_status(SecretInstance, instance.id, {"runtime_id": None, "objects": [], "role": None})


def _delete_labelled(cluster: Cluster, instance: SecretInstance) -> None:
    """Delete whatever carries the instance's label (the Secret the operator made, say)."""
    for api_version, kind in _KINDS:
        try:
            found = cluster.list(api_version, kind, label_selector=f"{SECRET_LABEL}={instance.id}")
        except KubernetesUnknownKind:
            continue  # the operator's CRDs are gone: none of those is left
        for obj in found:
            _delete(cluster, _ref(obj))


def _delete(cluster: Cluster, ref: dict[str, Any]) -> None:
    try:
        cluster.delete(ref["apiVersion"], ref["kind"], ref["name"], ref.get("namespace"))
    except KubernetesUnknownKind:
        pass  # the cluster serves the kind no more: none is left


def _ref(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj["metadata"]
    ref = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": metadata["name"]}
    return ref | ({"namespace": metadata["namespace"]} if metadata.get("namespace") else {})


register(SecretInstance.kind, Reconciler(reconcile=reconcile_secret_instance, delete=delete_secret_instance))
