"""IAM Roles for Service Accounts (IRSA): an IAM role that a Kubernetes service account assumes on EKS.

An EKS cluster the control plane built records its OIDC issuer in its status
(:func:`oidc_issuer`) once the build has made the account's IAM OIDC provider
for that issuer (:mod:`tasks.aws_eks_oidc`). A role trusts one service account
of that cluster when its trust policy lets ``sts:AssumeRoleWithWebIdentity``
through that provider (:func:`oidc_provider_arn`), for the subject
``system:serviceaccount:<namespace>:<name>`` (:func:`web_identity_trust`);
the service account names the role in its ``eks.amazonaws.com/role-arn``
annotation and EKS gives its pods credentials of the role. Roles have deterministic names
and carry the tags of the threeport object they were made for:
:func:`ensure_role` looks a role up before it creates one (a crash between
two calls cannot leave two), :func:`ensure_inline_policy` writes a policy
only when it differs, and :func:`delete_role` tolerates what is gone.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Optional

from models import store
from models.aws import AwsAccount, AwsEksKubernetesRuntimeDefinition, AwsEksKubernetesRuntimeInstance

from .aws_adapter import TAG_ID, Aws, AwsConflict, AwsNotFound, tag_dict, tag_list
from .errors import PermanentError, TemporaryError

__all__ = [
    # Where
    "eks_cluster_of",
    "oidc_issuer",
    "aws_of",
    # Policy documents
    "partition",
    "oidc_provider_path",
    "oidc_provider_arn",
    "policy_document",
    "web_identity_trust",
    "service_account_subject",
    "AUDIENCE",
    # Roles
    "role_arn",
    "ensure_role",
    "ensure_inline_policy",
    "delete_role",
]

#: The audience EKS's web identity tokens are issued for: the one client id of the cluster's OIDC provider.
AUDIENCE = "sts.amazonaws.com"


# Where --------------------------------------------------------------------------------------------


def eks_cluster_of(runtime_id: Optional[uuid.UUID]) -> Optional[AwsEksKubernetesRuntimeInstance]:
    """The EKS cluster the control plane built that fills in the runtime ``runtime_id``, if any."""
    if runtime_id is None:
        return None
    filters = {"kubernetes_runtime_instance_id": runtime_id}
    clusters, _ = store.list_objects(AwsEksKubernetesRuntimeInstance, filters=filters, limit=1)
    return clusters[0] if clusters else None


def oidc_issuer(eks: AwsEksKubernetesRuntimeInstance) -> Optional[str]:
    """The cluster's OIDC issuer URL, as its status records it (None until the cluster is active)."""
    status = eks.status or {}
    return (
        (status.get("cluster") or {}).get("oidc_issuer")
        or status.get("oidc_issuer")
        or (status.get("inventory") or {}).get("oidc_issuer")
    )


def aws_of(eks: AwsEksKubernetesRuntimeInstance) -> tuple[Aws, AwsAccount]:
    """The AWS door of the account the cluster is built in (in the cluster's region), and that account."""
    definition = store.get(AwsEksKubernetesRuntimeDefinition, eks.aws_eks_kubernetes_runtime_definition_id)
    account = store.get(AwsAccount, definition.aws_account_id)
    region = ((eks.status or {}).get("inventory") or {}).get("region") or eks.region
    return Aws.for_account(account, region), account


# Policy documents ---------------------------------------------------------------------------------


def partition(region: str) -> str:
    """The ARN partition of a region."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def policy_document(*statements: dict[str, Any]) -> str:
    """An IAM policy document of ``statements``, as JSON."""
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def service_account_subject(namespace: str, name: str) -> str:
    """The subject of a service account's web identity tokens."""
    return f"system:serviceaccount:{namespace}:{name}"


def oidc_provider_path(issuer: str) -> str:
    """How IAM names the OIDC provider of ``issuer``: its URL without the scheme (``oidc.eks…/id/…``)."""
    return issuer.removeprefix("https://").rstrip("/")


def oidc_provider_arn(issuer: str, *, account_id: str, region: str) -> str:
    """The ARN IAM gives the account's OIDC provider for ``issuer`` (the one the EKS build makes)."""
    return f"arn:{partition(region)}:iam::{account_id}:oidc-provider/{oidc_provider_path(issuer)}"


def web_identity_trust(*, issuer: str, subject: str, account_id: str, region: str) -> str:
    """A trust policy letting ``subject`` assume the role through the account's OIDC provider for ``issuer``."""
    provider = oidc_provider_path(issuer)
    statement = {
        "Effect": "Allow",
        "Principal": {"Federated": oidc_provider_arn(issuer, account_id=account_id, region=region)},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {f"{provider}:sub": subject, f"{provider}:aud": AUDIENCE}},
    }
    return policy_document(statement)


# Roles --------------------------------------------------------------------------------------------


def role_arn(name: str, *, account_id: str, region: str) -> str:
    """The ARN the role ``name`` has (or will have) in the account: known before the role is made."""
    return f"arn:{partition(region)}:iam::{account_id}:role/{name}"


def ensure_role(aws: Aws, name: str, *, trust: str, tags: dict[str, str], description: str) -> str:
    """The role ``name``, found or made, with the ``trust`` policy and ``tags``: its ARN.

    A role of that name made for another threeport object (by its
    ``threeport:object-id`` tag) is a permanent failure; nothing is written
    when the role is as wanted already.
    """
    try:
        role = aws.call("iam", "get_role", RoleName=name)["Role"]
    except AwsNotFound:
        try:
            params = {"AssumeRolePolicyDocument": trust, "Description": description, "Tags": tag_list(tags)}
            return aws.call("iam", "create_role", RoleName=name, **params)["Role"]["Arn"]
        except AwsConflict:  # made meanwhile
            role = aws.call("iam", "get_role", RoleName=name)["Role"]
    current = tag_dict(role.get("Tags") or [])
    owner = current.get(TAG_ID)
    if owner is not None and owner != tags.get(TAG_ID):
        raise PermanentError(f"IAM role {name} belongs to another threeport object ({owner})")
    if _document(role.get("AssumeRolePolicyDocument")) != json.loads(trust):
        aws.call("iam", "update_assume_role_policy", RoleName=name, PolicyDocument=trust)
    if any(current.get(key) != value for key, value in tags.items()):
        aws.call("iam", "tag_role", RoleName=name, Tags=tag_list(tags))
    return role["Arn"]


def ensure_inline_policy(aws: Aws, role: str, name: str, document: str) -> None:
    """Give ``role`` the inline policy ``name`` with ``document``, unless it has it already."""
    try:
        current = aws.call("iam", "get_role_policy", RoleName=role, PolicyName=name).get("PolicyDocument")
    except AwsNotFound:
        current = None
    if _document(current) != json.loads(document):
        aws.call("iam", "put_role_policy", RoleName=role, PolicyName=name, PolicyDocument=document)


def delete_role(aws: Aws, role: str, policies: tuple[str, ...]) -> None:
    """Delete the role's inline ``policies``, then the role; what is gone already is fine."""
    for policy in policies:
        try:
            aws.call("iam", "delete_role_policy", RoleName=role, PolicyName=policy)
        except AwsNotFound:
            pass
    try:
        aws.call("iam", "delete_role", RoleName=role)
    except AwsNotFound:
        pass
    except AwsConflict as exc:  # something else was attached to it meanwhile
        raise TemporaryError(f"role {role!r} cannot be deleted yet: {exc.message}", delay=10.0) from exc


def _document(value: Any) -> Any:
    """A policy document as IAM gives it back (boto3 decodes it; some endpoints leave it a JSON string)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
