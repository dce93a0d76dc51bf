"""The AwsObjectStorageBucketInstance reconciler: an S3 bucket for a workload, and the role it reaches it with.

A reconcile first records in the status the names it builds under (the
``inventory``: bucket, region, role, role policy), derived from the instance
and its id and kept once recorded, so a retry, a duplicate message or a
rename finds what an interrupted attempt made instead of making another.
Then, each step idempotent: the bucket in the account's region, its tags,
its public access (all blocked, unless the definition allows public reads:
then a public-read bucket policy), and an IAM role (looked up before it is
made: :func:`tasks.aws_irsa.ensure_role`) with an inline policy on the
bucket's objects. The workload's service account assumes the role through
its EKS cluster's OIDC provider (IRSA) when the workload runs on an EKS
runtime whose OIDC issuer is known; otherwise the role trusts the account
root, and the status says so. The status also carries the
environment variable that tells the workload the bucket's name (``env``).
Deletion empties the bucket (every object version), deletes it, then the
role policy and the role, tolerating what is already gone.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from models import store
from models.aws import AwsAccount, AwsObjectStorageBucketDefinition, AwsObjectStorageBucketInstance
from models.kubernetes import KubernetesRuntimeInstance
from models.workloads import WorkloadInstance, WorkloadResourceDefinition

from . import aws_irsa
from .aws_adapter import Aws, AwsConflict, AwsNotFound, tag_list, tags_for
from .errors import PermanentError, TemporaryError
from .reconcilers import Reconciler, register

__all__ = ["bucket_name", "role_name", "reconcile_bucket", "delete_bucket", "ROLE_POLICY_NAME"]

#: The role's inline policy: what the workload may do with the bucket.
ROLE_POLICY_NAME = "threeport-bucket-access"
#: The role's description, as IAM shows it.
ROLE_DESCRIPTION = "A threeport workload's access to its S3 bucket."
#: What the workload may do with the bucket's objects, and with the bucket itself.
OBJECT_ACTIONS = ("s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
BUCKET_ACTIONS = ("s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads")
#: The four switches of S3's public access block.
_BLOCK_SWITCHES = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
#: Longest readable part of a name: ``threeport-<slug>-<12 hex>`` stays within S3's 63 (and IAM's 64) characters.
_SLUG_LENGTH = 40


def bucket_name(instance: AwsObjectStorageBucketInstance) -> str:
    """``threeport-<name>-<12 hex of the id>``: a valid bucket name, lowercase, at most 63 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", instance.name.lower()).strip("-")[:_SLUG_LENGTH].strip("-") or "bucket"
    return f"threeport-{slug}-{instance.id.hex[:12]}"


def role_name(instance: AwsObjectStorageBucketInstance) -> str:
    """The workload's IAM role: named as the bucket (IAM allows 64 characters)."""
    return bucket_name(instance)


def reconcile_bucket(instance: AwsObjectStorageBucketInstance) -> None:
    """Make the bucket, its settings and the workload's role match the instance and its definition."""
    definition = store.get(AwsObjectStorageBucketDefinition, instance.aws_object_storage_bucket_definition_id)
    account = store.get(AwsAccount, definition.aws_account_id)
    workload = store.get(WorkloadInstance, instance.workload_instance_id)
    inventory = _planned_inventory(instance, account)
    aws = Aws.for_account(account, region=inventory["region"])
    bucket, role = inventory["bucket"], inventory["role"]
    tags = tags_for(instance, Name=bucket)
    target = _target(bucket, account)

    _create_bucket(aws, bucket)
    aws.call("s3", "put_bucket_tagging", **target, Tagging={"TagSet": tag_list(tags)})
    _set_public_access(aws, target, public=definition.public_read_access)

    trust, how = _trust_policy(workload, definition, account, aws.region)
    inventory["role_arn"] = aws_irsa.ensure_role(aws, role, trust=trust, tags=tags, description=ROLE_DESCRIPTION)
    policy = _access_policy(bucket, aws.region)
    aws.call("iam", "put_role_policy", RoleName=role, PolicyName=inventory["role_policy"], PolicyDocument=policy)
    env = {definition.workload_bucket_env_var: bucket}
    status = {"inventory": inventory, "env": env, "role_trust": how}
    store.merge_status(AwsObjectStorageBucketInstance, instance.id, status)
    if (instance.status or {}).get("env") != env:  # the workload picks the new environment up
        store.request_reconcile(WorkloadInstance, [instance.workload_instance_id])


def delete_bucket(instance: AwsObjectStorageBucketInstance) -> None:
    """Empty and delete the bucket, then the role's policy and the role; what is gone already is fine."""
    if (instance.status or {}).get("env"):  # first the workload lets go: its environment variable goes
        store.merge_status(AwsObjectStorageBucketInstance, instance.id, {"env": None})
        store.request_reconcile(WorkloadInstance, [instance.workload_instance_id])
    definition = store.get(AwsObjectStorageBucketDefinition, instance.aws_object_storage_bucket_definition_id)
    account = store.get(AwsAccount, definition.aws_account_id)
    recorded = (instance.status or {}).get("inventory") or {}
    aws = Aws.for_account(account, region=recorded.get("region"))
    target = _target(recorded.get("bucket") or bucket_name(instance), account)
    if _empty_bucket(aws, target):
        _delete_empty_bucket(aws, target)
    role, policy = recorded.get("role") or role_name(instance), recorded.get("role_policy") or ROLE_POLICY_NAME
    aws_irsa.delete_role(aws, role, (policy,))


# The inventory --------------------------------------------------------------------


def _planned_inventory(instance: AwsObjectStorageBucketInstance, account: AwsAccount) -> dict[str, Any]:
    """The names to build under: those recorded by an earlier attempt, else new ones, recorded now."""
    recorded = dict((instance.status or {}).get("inventory") or {})
    planned = {
        "bucket": recorded.get("bucket") or bucket_name(instance),
        "region": recorded.get("region") or account.default_region,
        "role": recorded.get("role") or role_name(instance),
        "role_policy": recorded.get("role_policy") or ROLE_POLICY_NAME,
    }
    if any(recorded.get(key) != value for key, value in planned.items()):
        store.merge_status(AwsObjectStorageBucketInstance, instance.id, {"inventory": {**recorded, **planned}})
    return {**recorded, **planned}


# The bucket -----------------------------------------------------------------------


def _target(bucket: str, account: AwsAccount) -> dict[str, str]:
    """The parameters naming the bucket in a call: S3 refuses the call if another account owns a bucket of that name."""
    return {"Bucket": bucket, "ExpectedBucketOwner": account.account_id}


def _create_bucket(aws: Aws, bucket: str) -> None:
    """Create the bucket in the client's region; one we own already is fine."""
    params: dict[str, Any] = {"Bucket": bucket}
    if aws.region != "us-east-1":  # the one region that takes no LocationConstraint
        params["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
    try:
        aws.call("s3", "create_bucket", **params)
    except AwsConflict as exc:
        if exc.code != "BucketAlreadyOwnedByYou":
            raise PermanentError(f"the bucket name {bucket!r} is taken by another AWS account ({exc.code})") from exc


def _set_public_access(aws: Aws, target: dict[str, str], *, public: bool) -> None:
    """Block every kind of public access, or allow it and let anyone read the objects."""
    switches = {switch: not public for switch in _BLOCK_SWITCHES}
    aws.call("s3", "put_public_access_block", **target, PublicAccessBlockConfiguration=switches)
    if public:
        aws.call("s3", "put_bucket_policy", **target, Policy=_public_read_policy(target["Bucket"], aws.region))
        return
    try:  # public reads were allowed before: take the policy back
        aws.call("s3", "delete_bucket_policy", **target)
    except AwsNotFound:
        pass


def _empty_bucket(aws: Aws, target: dict[str, str]) -> bool:
    """Delete every object version and delete marker of the bucket: whether the bucket is there."""
    while True:
        try:
            page = aws.call("s3", "list_object_versions", **target, MaxKeys=1000)
        except AwsNotFound:
            return False
        listed = page.get("Versions", []) + page.get("DeleteMarkers", [])
        if not listed:
            return True
        objects = [{"Key": item["Key"], "VersionId": item["VersionId"]} for item in listed]
        answer = aws.call("s3", "delete_objects", **target, Delete={"Objects": objects, "Quiet": True})
        if answer.get("Errors"):
            first, count = answer["Errors"][0], len(answer["Errors"])
            message = f"could not delete {count} objects of bucket {target['Bucket']!r}: {first.get('Code')}"
            if str(first.get("Code", "")).startswith("AccessDenied"):
                raise PermanentError(f"{message}: {first.get('Message', '')}")
            raise TemporaryError(message)


def _delete_empty_bucket(aws: Aws, target: dict[str, str]) -> None:
    try:
        aws.call("s3", "delete_bucket", **target)
    except AwsNotFound:
        pass
    except AwsConflict as exc:  # objects arrived since it was emptied
        raise TemporaryError(f"bucket {target['Bucket']!r} is not empty yet ({exc.code})", delay=1.0) from exc


# The workload's role --------------------------------------------------------------


def _trust_policy(
    workload: WorkloadInstance, definition: AwsObjectStorageBucketDefinition, account: AwsAccount, region: str
) -> tuple[str, str]:
    """Who may assume the role (a policy document), and that said in words for the status."""
    issuer = _oidc_issuer(workload)
    if issuer is None:
        statement = {
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:{aws_irsa.partition(region)}:iam::{account.account_id}:root"},
            "Action": "sts:AssumeRole",
        }
        how = (
            f"the role trusts the account root ({account.account_id}): the workload's runtime is not an EKS "
            "cluster whose OIDC issuer is known, so its service account cannot assume the role by itself (IRSA)"
        )
        return aws_irsa.policy_document(statement), how
    provider = aws_irsa.oidc_provider_path(issuer)
    namespace = _service_account_namespace(workload, definition.workload_service_account_name)
    subject = aws_irsa.service_account_subject(namespace, definition.workload_service_account_name)
    trust = aws_irsa.web_identity_trust(issuer=issuer, subject=subject, account_id=account.account_id, region=region)
    return trust, f"IRSA: the role trusts {subject} through the OIDC provider {provider}"


def _oidc_issuer(workload: WorkloadInstance) -> Optional[str]:
    """The OIDC issuer URL of the EKS cluster the workload runs on, when it is one and the issuer is known."""
    runtime_id = workload.kubernetes_runtime_instance_id
    if runtime_id is None:
        defaults, _ = store.list_objects(KubernetesRuntimeInstance, filters={"default_runtime": True}, limit=1)
        runtime_id = defaults[0].id if defaults else None
    eks = aws_irsa.eks_cluster_of(runtime_id)
    return aws_irsa.oidc_issuer(eks) if eks is not None else None


def _service_account_namespace(workload: WorkloadInstance, service_account: str) -> str:
    """The namespace the workload's YAML puts its service account in: its own, the only Namespace, or default."""
    filters = {"workload_definition_id": workload.workload_definition_id}
    rows, _ = store.list_objects(WorkloadResourceDefinition, filters=filters, limit=store.MAX_PAGE_SIZE)
    documents = [row.json_definition for row in rows]
    for document in documents:
        metadata = document.get("metadata") or {}
        if document.get("kind") == "ServiceAccount" and metadata.get("name") == service_account:
            if metadata.get("namespace"):
                return metadata["namespace"]
    namespaces = [(d.get("metadata") or {}).get("name") for d in documents if d.get("kind") == "Namespace"]
    return namespaces[0] if len(namespaces) == 1 and namespaces[0] else "default"


# Policy documents -----------------------------------------------------------------


def _public_read_policy(bucket: str, region: str) -> str:
    arn = f"arn:{aws_irsa.partition(region)}:s3:::{bucket}"
    return aws_irsa.policy_document(
        {"Sid": "PublicRead", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"{arn}/*"}
    )


def _access_policy(bucket: str, region: str) -> str:
    arn = f"arn:{aws_irsa.partition(region)}:s3:::{bucket}"
    return aws_irsa.policy_document(
        {"Sid": "Bucket", "Effect": "Allow", "Action": list(BUCKET_ACTIONS), "Resource": arn},
        {"Sid": "Objects", "Effect": "Allow", "Action": list(OBJECT_ACTIONS), "Resource": f"{arn}/*"},
    )


register(AwsObjectStorageBucketInstance.kind, Reconciler(reconcile=reconcile_bucket, delete=delete_bucket))
