"""Opt-in: the account and bucket reconcilers against real AWS.

Runs only with ``THREEPORT_AWS_TESTS=1`` and AWS credentials in the
environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, optionally
``AWS_SESSION_TOKEN`` and ``AWS_DEFAULT_REGION``); otherwise the tests are
skipped and pytest's summary says why. What it costs: one STS call, and one
private S3 bucket and IAM role that live for a few seconds (deleted at the
end, also when the test fails). EKS and RDS are not run against real AWS
here: they take minutes and cost money by the hour.
"""

from __future__ import annotations

import os

import boto3
import pytest

from models import store
from models.aws import AwsAccount, AwsObjectStorageBucketDefinition, AwsObjectStorageBucketInstance
from models.kubernetes import KubernetesRuntimeDefinition, KubernetesRuntimeInstance
from models.workloads import WorkloadDefinition, WorkloadInstance
from tasks.aws_accounts import reconcile_account
from tasks.aws_s3 import delete_bucket, reconcile_bucket

ENABLED = os.environ.get("THREEPORT_AWS_TESTS") == "1" and bool(os.environ.get("AWS_ACCESS_KEY_ID"))
pytestmark = pytest.mark.skipif(
    not ENABLED,
    reason="real AWS not asked for: set THREEPORT_AWS_TESTS=1 and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY to run",
)


@pytest.fixture
def account(database) -> AwsAccount:
    """An AwsAccount with the environment's keys, for the account they belong to."""
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    identity = boto3.client("sts", region_name=region).get_caller_identity()
    written = store.create(
        AwsAccount,
        {
            "name": "real",
            "account_id": identity["Account"],
            "default_region": region,
            "access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
        },
    )
    return written.obj


def test_a_real_account_is_verified(account):
    # When the account is reconciled, then its caller identity is the environment's
    reconcile_account(account)
    identity = store.get(AwsAccount, account.id).status["caller_identity"]
    assert identity["Account"] == account.account_id and identity["Arn"].startswith("arn:aws")


def test_a_real_bucket_is_built_and_removed(account):
    # Given a bucket instance for a workload (the workload's side needs no cluster for this)
    definition = store.create(
        AwsObjectStorageBucketDefinition,
        {"name": "real", "aws_account_id": account.id, "workload_service_account_name": "web"},
    ).obj
    workload_definition = store.create(WorkloadDefinition, {"name": "web", "yaml_document": "kind: X\n"}).obj
    runtime_definition = store.create(KubernetesRuntimeDefinition, {"name": "k", "infra_provider": "kubernetes"}).obj
    runtime = store.create(
        KubernetesRuntimeInstance, {"name": "k1", "kubernetes_runtime_definition_id": runtime_definition.id}
    ).obj
    workload = store.create(
        WorkloadInstance,
        {"name": "web", "workload_definition_id": workload_definition.id, "kubernetes_runtime_instance_id": runtime.id},
    ).obj
    instance = store.create(
        AwsObjectStorageBucketInstance,
        {"name": "real", "aws_object_storage_bucket_definition_id": definition.id, "workload_instance_id": workload.id},
    ).obj
    s3 = boto3.client("s3", region_name=account.default_region)
    try:
        # When it is reconciled, then the bucket exists, private and tagged
        reconcile_bucket(store.get(AwsObjectStorageBucketInstance, instance.id))
        bucket = store.get(AwsObjectStorageBucketInstance, instance.id).status["inventory"]["bucket"]
        tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
        assert tags["threeport:object-id"] == str(instance.id)
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(block.values())
    finally:
        # And deleting it removes the bucket
        delete_bucket(store.get(AwsObjectStorageBucketInstance, instance.id))
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert all(not name.endswith(instance.id.hex[:12]) for name in names)
