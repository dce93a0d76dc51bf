"""The AwsObjectStorageBucketInstance reconciler end to end: real PostgreSQL, NATS, a Dramatiq worker, moto over HTTP.

The account's endpoint is the fault proxy in front of moto, so a test can
make AWS fail and count the reconciler's calls; the test itself looks at
moto directly with boto3. The workload instance is not deployed (no
cluster here): the tests mark it reconciled themselves, as its reconciler
would once it had deployed it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import boto3
import pytest
from botocore.exceptions import ClientError

from models import store
from models.aws import (
    AwsAccount,
    AwsEksKubernetesRuntimeDefinition,
    AwsEksKubernetesRuntimeInstance,
    AwsObjectStorageBucketDefinition,
    AwsObjectStorageBucketInstance,
)
from models.kubernetes import KubernetesRuntimeDefinition, KubernetesRuntimeInstance
from models.workloads import WorkloadDefinition, WorkloadInstance
from tasks import aws_s3
from tasks.aws_adapter import TAG_ID, TAG_KIND, tag_dict
from workers.outbox_relay import publish_rows

from .aws import ACCESS_KEYS, ACCOUNT_ID
from .reconciling import observed, reconciled, wait_for

REGION = "eu-west-1"
YAML = """\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
"""
OIDC_ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"


@pytest.fixture
def moto(aws_endpoint):
    """boto3 clients straight to moto (not through the proxy), to look at what the reconciler made."""

    keys = {"aws_access_key_id": "x", "aws_secret_access_key": "y"}

    def client(service: str):
        return boto3.client(service, region_name=REGION, endpoint_url=aws_endpoint, **keys)

    return client


@dataclass
class World:
    """What a bucket instance references: an account, a runtime and a workload, reconciled (or standing in)."""

    broker: object
    account: AwsAccount
    runtime: KubernetesRuntimeInstance
    workload: WorkloadInstance

    def definition(self, name="media", public=False) -> AwsObjectStorageBucketDefinition:
        fields = {
            "name": name,
            "aws_account_id": self.account.id,
            "public_read_access": public,
            "workload_service_account_name": "web",
            "workload_bucket_env_var": "MEDIA_BUCKET",
        }
        written = store.create(AwsObjectStorageBucketDefinition, fields)
        publish_rows(self.broker, written.outbox)
        return wait_for(lambda: reconciled(AwsObjectStorageBucketDefinition, written.obj.id))

    def bucket(self, definition, name="Media Files #1") -> AwsObjectStorageBucketInstance:
        fields = {
            "name": name,
            "aws_object_storage_bucket_definition_id": definition.id,
            "workload_instance_id": self.workload.id,
        }
        written = store.create(AwsObjectStorageBucketInstance, fields)
        publish_rows(self.broker, written.outbox)
        return written.obj


@pytest.fixture
def world(broker, reconciling, aws_proxy) -> World:
    # An account on the proxy, reconciled by its own reconciler
    account = store.create(
        AwsAccount,
        {"name": "main", "account_id": ACCOUNT_ID, "default_region": REGION, "endpoint_url": aws_proxy.url}
        | ACCESS_KEYS,
    )
    # A workload definition (reconciled: its documents are recorded) and an existing cluster to run it on
    workload_definition = store.create(WorkloadDefinition, {"name": "web", "yaml_document": YAML})
    runtime_definition = store.create(KubernetesRuntimeDefinition, {"name": "k", "infra_provider": "kubernetes"})
    runtime = store.create(
        KubernetesRuntimeInstance, {"name": "k1", "kubernetes_runtime_definition_id": runtime_definition.obj.id}
    )
    workload = store.create(
        WorkloadInstance,
        {
            "name": "web-1",
            "workload_definition_id": workload_definition.obj.id,
            "kubernetes_runtime_instance_id": runtime.obj.id,
        },
    )
    publish_rows(broker, account.outbox + workload_definition.outbox)
    # The workload instance is not deployed here: mark it reconciled, as its reconciler would
    store.write_status(WorkloadInstance, workload.obj.id, generation=1, status={"phase": "Reconciled"}, reconciled=True)
    wait_for(lambda: reconciled(AwsAccount, account.obj.id))
    wait_for(lambda: reconciled(WorkloadDefinition, workload_definition.obj.id))
    aws_proxy.clear()
    return World(broker, account.obj, runtime.obj, workload.obj)


def buckets_of(moto, obj_id) -> list[str]:
    """The buckets tagged as made for ``obj_id``."""
    s3, names = moto("s3"), []
    for bucket in s3.list_buckets()["Buckets"]:
        try:
            tags = tag_dict(s3.get_bucket_tagging(Bucket=bucket["Name"])["TagSet"])
        except ClientError:
            continue
        if tags.get(TAG_ID) == str(obj_id):
            names.append(bucket["Name"])
    return names


def roles_of(moto, obj_id) -> list[str]:
    """The IAM roles tagged as made for ``obj_id``."""
    iam = moto("iam")
    roles = [role["RoleName"] for role in iam.list_roles()["Roles"]]
    return [name for name in roles if tag_dict(iam.list_role_tags(RoleName=name)["Tags"]).get(TAG_ID) == str(obj_id)]


def error_code(call) -> str:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value.response["Error"]["Code"]


def test_a_bucket_instance_builds_a_private_bucket_and_the_workloads_role(world, moto, aws_proxy):
    # Given a private bucket definition, and an instance of it for the workload
    instance = world.bucket(world.definition(public=False))

    # Then it is reconciled, with its inventory and the workload's env var in its status
    done = wait_for(lambda: observed(AwsObjectStorageBucketInstance, instance.id))
    assert (done.status["phase"], done.reconciled) == ("Reconciled", True), done.status
    bucket = f"threeport-media-files-1-{instance.id.hex[:12]}"
    assert aws_s3.bucket_name(instance) == bucket
    inventory = done.status["inventory"]
    assert inventory == {
        "bucket": bucket,
        "region": REGION,
        "role": bucket,
        "role_policy": "threeport-bucket-access",
        "role_arn": f"arn:aws:iam::{ACCOUNT_ID}:role/{bucket}",
    }
    assert done.status["env"] == {"MEDIA_BUCKET": bucket}

    # And the bucket is in the account's region, tagged with the instance, all public access blocked, no policy
    s3 = moto("s3")
    assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == REGION
    tags = tag_dict(s3.get_bucket_tagging(Bucket=bucket)["TagSet"])
    assert tags == {TAG_KIND: "AwsObjectStorageBucketInstance", TAG_ID: str(instance.id), "Name": bucket}
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )
    assert error_code(lambda: s3.get_bucket_policy(Bucket=bucket)) == "NoSuchBucketPolicy"

    # And the role is tagged, trusts the account root (an existing cluster has no known OIDC issuer), as said
    iam = moto("iam")
    role = iam.get_role(RoleName=bucket)["Role"]
    assert tag_dict(role["Tags"])[TAG_ID] == str(instance.id)
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"} and trust["Action"] == "sts:AssumeRole"
    assert "trusts the account root" in done.status["role_trust"]
    # And its inline policy grants the bucket's object actions
    document = iam.get_role_policy(RoleName=bucket, PolicyName="threeport-bucket-access")["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    by_sid = {statement["Sid"]: statement for statement in document["Statement"]}
    assert by_sid["Objects"]["Resource"] == f"arn:aws:s3:::{bucket}/*"
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= set(by_sid["Objects"]["Action"])
    assert by_sid["Bucket"]["Resource"] == f"arn:aws:s3:::{bucket}" and "s3:ListBucket" in by_sid["Bucket"]["Action"]

    # When the reconcile runs again (a duplicate message after a crash, say)
    aws_s3.reconcile_bucket(store.get(AwsObjectStorageBucketInstance, instance.id))

    # Then it made nothing new: one bucket and one role carry the instance's tags, the role made once and kept
    assert buckets_of(moto, instance.id) == [bucket] and roles_of(moto, instance.id) == [bucket]
    assert iam.get_role(RoleName=bucket)["Role"]["RoleId"] == role["RoleId"] and aws_proxy.count("CreateRole") == 1


def test_a_public_read_definition_allows_public_reads(world, moto):
    # Given a definition that lets anyone read the objects
    instance = world.bucket(world.definition(public=True))

    # Then the bucket blocks no public access, and its policy lets anyone get its objects
    done = wait_for(lambda: reconciled(AwsObjectStorageBucketInstance, instance.id))
    bucket = done.status["inventory"]["bucket"]
    s3 = moto("s3")
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert set(block.values()) == {False}
    [statement] = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert (statement["Effect"], statement["Principal"], statement["Action"]) == ("Allow", "*", "s3:GetObject")
    assert statement["Resource"] == f"arn:aws:s3:::{bucket}/*"


def test_on_an_eks_runtime_with_a_known_oidc_issuer_the_service_account_assumes_the_role(world, moto):
    # Given the workload's runtime is an EKS cluster whose OIDC issuer its status knows
    eks_definition = store.create(
        AwsEksKubernetesRuntimeDefinition, {"name": "eks", "aws_account_id": world.account.id}
    )
    cluster = store.create(
        AwsEksKubernetesRuntimeInstance,
        {
            "name": "eks-1",
            "aws_eks_kubernetes_runtime_definition_id": eks_definition.obj.id,
            "kubernetes_runtime_instance_id": world.runtime.id,
        },
    )
    store.merge_status(AwsEksKubernetesRuntimeInstance, cluster.obj.id, {"oidc_issuer": OIDC_ISSUER})

    # When a bucket instance is reconciled for the workload
    instance = world.bucket(world.definition())
    done = wait_for(lambda: reconciled(AwsObjectStorageBucketInstance, instance.id))

    # Then the role trusts the workload's service account (in the namespace its YAML gives) through the provider
    role = moto("iam").get_role(RoleName=done.status["inventory"]["role"])["Role"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    provider = OIDC_ISSUER.removeprefix("https://")
    assert trust["Principal"] == {"Federated": f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{provider}"}
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert trust["Condition"]["StringEquals"] == {
        f"{provider}:sub": "system:serviceaccount:shop:web",
        f"{provider}:aud": "sts.amazonaws.com",
    }
    assert done.status["role_trust"].startswith("IRSA: the role trusts system:serviceaccount:shop:web")


def test_deleting_the_instance_empties_and_removes_the_bucket_and_the_role(world, moto, broker):
    # Given a reconciled bucket holding objects, several versions of them and a delete marker
    instance = world.bucket(world.definition())
    bucket = wait_for(lambda: reconciled(AwsObjectStorageBucketInstance, instance.id)).status["inventory"]["bucket"]
    s3 = moto("s3")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for key, body in [("a.txt", b"1"), ("a.txt", b"2"), ("dir/b.txt", b"3")]:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3.delete_object(Bucket=bucket, Key="dir/b.txt")
    # And its role's policy already removed by hand (deletion tolerates what is gone)
    moto("iam").delete_role_policy(RoleName=bucket, PolicyName="threeport-bucket-access")

    # When the instance is deleted
    before = store.get(WorkloadInstance, world.workload.id).generation
    publish_rows(broker, store.schedule_deletion(AwsObjectStorageBucketInstance, instance.id).outbox)

    # Then its row goes, and with it the bucket and the role
    wait_for(
        lambda: AwsObjectStorageBucketInstance.get_or_none(AwsObjectStorageBucketInstance.id == instance.id) is None
    )
    assert error_code(lambda: s3.head_bucket(Bucket=bucket)) == "404"
    assert error_code(lambda: moto("iam").get_role(RoleName=bucket)) == "NoSuchEntity"
    assert buckets_of(moto, instance.id) == [] and roles_of(moto, instance.id) == []
    # And the workload was asked to reconcile again, to drop the bucket's environment variable
    assert store.get(WorkloadInstance, world.workload.id).generation > before


def test_a_throttled_create_bucket_is_retried(world, aws_proxy):
    # Given S3 answers the first two CreateBucket requests with SlowDown
    aws_proxy.fail("CreateBucket", "SlowDown", 503, times=2)

    # When a bucket instance is created, then it is reconciled after a third request
    instance = world.bucket(world.definition())
    assert wait_for(lambda: reconciled(AwsObjectStorageBucketInstance, instance.id)).status["phase"] == "Reconciled"
    assert aws_proxy.count("CreateBucket") == 3


def test_access_denied_on_create_bucket_is_a_permanent_failure(world, aws_proxy, moto, broker):
    # Given the account may not create buckets
    aws_proxy.fail("CreateBucket", "AccessDenied", 403, times=None)

    # When a bucket instance is created, then it fails naming AccessDenied
    instance = world.bucket(world.definition())
    done = wait_for(lambda: observed(AwsObjectStorageBucketInstance, instance.id))
    assert (done.status["phase"], done.creation_failed, done.reconciled) == ("Failed", True, False)
    assert "s3:create_bucket: AccessDenied" in done.status["message"]

    # And it is not retried, and went no further: no bucket, no role
    time.sleep(1.0)
    assert aws_proxy.count("CreateBucket") == 1 and aws_proxy.count("CreateRole") == 0
    assert buckets_of(moto, instance.id) == [] and roles_of(moto, instance.id) == []
    stats = broker.queue_stats("aws")
    assert (stats.ready, stats.delayed, stats.dead) == (0, 0, 0)


def stand_in_reconciled(model, written) -> None:
    """Mark an object reconciled, as its own reconciler would (no worker runs in this process)."""
    store.write_status(model, written.obj.id, generation=1, status={"phase": "Reconciled"}, reconciled=True)


@pytest.mark.parametrize("step", ["CreateBucket", "CreateRole"])
def test_a_worker_killed_mid_step_leaves_no_duplicates(database, broker, start_worker, aws_proxy, moto, step):
    # Given an account, a bucket definition and a workload, all reconciled, and no worker in this process
    account = store.create(
        AwsAccount,
        {"name": "main", "account_id": ACCOUNT_ID, "default_region": REGION, "endpoint_url": aws_proxy.url}
        | ACCESS_KEYS,
    )
    definition = store.create(
        AwsObjectStorageBucketDefinition,
        {"name": "media", "aws_account_id": account.obj.id, "workload_service_account_name": "web"},
    )
    workload_definition = store.create(WorkloadDefinition, {"name": "web", "yaml_document": YAML})
    workload = store.create(WorkloadInstance, {"name": "web-1", "workload_definition_id": workload_definition.obj.id})
    for model, written in (
        (AwsAccount, account),
        (AwsObjectStorageBucketDefinition, definition),
        (WorkloadDefinition, workload_definition),
        (WorkloadInstance, workload),
    ):
        stand_in_reconciled(model, written)
    store.delete_outbox(row.id for row in store.pending_outbox(older_than_seconds=0, limit=100))

    # And a worker process, with AWS holding the step's request unanswered
    doomed = start_worker()
    aws_proxy.hold(step)

    # When a bucket instance is created and its worker is killed (SIGKILL) while that request is held
    instance = store.create(
        AwsObjectStorageBucketInstance,
        {
            "name": "media-1",
            "aws_object_storage_bucket_definition_id": definition.obj.id,
            "workload_instance_id": workload.obj.id,
        },
    )
    publish_rows(broker, instance.outbox)
    aws_proxy.wait_held(timeout=30)
    doomed.kill()
    doomed.wait()

    # And AWS carries the request out anyway, the answer going nowhere; then another worker takes over
    aws_proxy.release()
    wait_for(lambda: aws_proxy.count(step) == 1 and not aws_proxy.held)
    start_worker()

    # Then the instance ends reconciled with one bucket and one role, the role made exactly once (found, not
    # made again, when the dead worker's request had made it)
    done = wait_for(lambda: observed(AwsObjectStorageBucketInstance, instance.obj.id), timeout=60)
    assert done.status["phase"] == "Reconciled", done.status
    assert len(buckets_of(moto, instance.obj.id)) == 1
    assert len(roles_of(moto, instance.obj.id)) == 1 and aws_proxy.count("CreateRole") == 1
