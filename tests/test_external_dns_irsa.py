"""external-dns's AWS credentials on EKS (IRSA), end to end: real PostgreSQL, NATS and Dramatiq worker, the
Kubernetes API server stand-in (tests/kube.py) and moto behind the fault proxy (tests/aws_faults.py).

The EKS cluster is not built here (tests/test_aws_eks.py does that): its row
links the stand-in's runtime and records an OIDC issuer, as the EKS
reconciler does once the cluster is active. The test looks at IAM in moto
directly and counts the reconciler's calls at the proxy.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from models import (
    AwsAccount,
    AwsEksKubernetesRuntimeDefinition,
    AwsEksKubernetesRuntimeInstance,
    DomainNameDefinition,
    DomainNameInstance,
    KubernetesRuntimeInstance,
    WorkloadDefinition,
    WorkloadInstance,
    store,
)
from models.base import ReconciledModel
from tasks import kubernetes_runtimes
from tasks.aws_adapter import TAG_ID, TAG_KIND, tag_dict
from tasks.aws_eks import TAG_PART, resource_names
from tasks.gateways import DNS_ROLE_POLICY
from tasks.kubernetes_adapter import RetryPolicy
from tasks.support_components import EKS_ROLE_ANNOTATION
from workers.outbox_relay import publish_rows

from .aws import ACCESS_KEYS, ACCOUNT_ID
from .kube import runtime_for
from .reconciling import observed, wait_for

REGION = "us-east-1"
OIDC_ISSUER = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
PROVIDER = OIDC_ISSUER.removeprefix("https://")
WORKLOAD = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: web
"""


# Fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture
def cluster_calls(monkeypatch):
    """Calls to the stand-in retried briefly; the cached connections forgotten afterwards."""
    monkeypatch.setattr(kubernetes_runtimes, "RETRY_POLICY", RetryPolicy(attempts=2, initial=0.01, ceiling=0.05))
    yield
    kubernetes_runtimes.forget_clusters()


@pytest.fixture
def iam(aws_endpoint):
    """IAM in moto, looked at directly (not through the proxy)."""
    return boto3.client(
        "iam", region_name=REGION, endpoint_url=aws_endpoint, aws_access_key_id="x", aws_secret_access_key="y"
    )


def given(model: type[ReconciledModel], fields: dict[str, Any]) -> ReconciledModel:
    """An object marked reconciled (its own reconciler is not what is tested here)."""
    obj = store.create(model, fields).obj
    store.write_status(model, obj.id, generation=obj.generation, status={"phase": "Reconciled"}, reconciled=True)
    return obj


def a_workload(runtime: KubernetesRuntimeInstance) -> WorkloadInstance:
    definition = given(WorkloadDefinition, {"name": "web", "yaml_document": WORKLOAD})
    fields = {"name": "web-1", "workload_definition_id": definition.id, "kubernetes_runtime_instance_id": runtime.id}
    return given(WorkloadInstance, fields)


def an_eks_cluster_behind(runtime: KubernetesRuntimeInstance, endpoint: str) -> AwsEksKubernetesRuntimeInstance:
    """An EKS cluster row filling in ``runtime``, active: its OIDC issuer recorded as the EKS reconciler records it."""
    fields = {"name": "main", "account_id": ACCOUNT_ID, "default_region": REGION, "endpoint_url": endpoint}
    account = given(AwsAccount, fields | ACCESS_KEYS)
    definition = given(AwsEksKubernetesRuntimeDefinition, {"name": "eks", "aws_account_id": account.id})
    fields = {
        "name": "prod",
        "aws_eks_kubernetes_runtime_definition_id": definition.id,
        "kubernetes_runtime_instance_id": runtime.id,
    }
    eks = store.create(AwsEksKubernetesRuntimeInstance, fields).obj
    store.merge_status(AwsEksKubernetesRuntimeInstance, eks.id, {"cluster": {"oidc_issuer": OIDC_ISSUER}})
    return eks


def a_domain_name(broker, workload: WorkloadInstance, domain: str) -> DomainNameInstance:
    """A DomainNameInstance for ``workload`` under ``domain``, once its reconciler has observed it."""
    fields = {"name": domain, "domain": domain, "zone": "Public", "admin_email": f"admin@{domain}"}
    definition = given(DomainNameDefinition, fields)
    fields = {"name": domain, "domain_name_definition_id": definition.id, "workload_instance_id": workload.id}
    written = store.create(DomainNameInstance, fields)
    publish_rows(broker, written.outbox)
    done = wait_for(lambda: observed(DomainNameInstance, written.obj.id))
    assert done.status["phase"] == "Reconciled", done.status
    return done


def delete(broker, obj_id) -> None:
    publish_rows(broker, store.schedule_deletion(DomainNameInstance, obj_id).outbox)
    wait_for(lambda: DomainNameInstance.get_or_none(DomainNameInstance.id == obj_id) is None)


def roles_tagged(iam, obj_id) -> list[str]:
    names = [role["RoleName"] for role in iam.list_roles()["Roles"]]
    return [name for name in names if tag_dict(iam.list_role_tags(RoleName=name)["Tags"]).get(TAG_ID) == str(obj_id)]


def document(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else value


def service_account(kube) -> dict[str, Any]:
    return kube.live("v1", "ServiceAccount", "external-dns", "external-dns")


# Tests ------------------------------------------------------------------------------------------


def test_on_eks_external_dns_assumes_a_role_of_its_own_until_the_last_domain_name_goes(
    kube, broker, reconciling, cluster_calls, aws_proxy, iam
):
    # Given a workload on a runtime that an EKS cluster of the control plane fills in
    runtime = runtime_for(kube.url)
    eks = an_eks_cluster_behind(runtime, aws_proxy.url)
    workload = a_workload(runtime)
    role = resource_names(eks)["external_dns_role"]
    arn = f"arn:aws:iam::{ACCOUNT_ID}:role/{role}"

    # When the workload gets a domain name
    first = a_domain_name(broker, workload, "example.com")

    # Then external-dns's role exists, named and tagged after the cluster
    assert first.status["aws_role_arn"] == arn
    found = iam.get_role(RoleName=role)["Role"]
    assert found["Arn"] == arn
    tags = tag_dict(iam.list_role_tags(RoleName=role)["Tags"])
    assert (tags[TAG_KIND], tags[TAG_ID], tags[TAG_PART]) == (eks.kind, str(eks.id), "external-dns-role")
    # And only external-dns's service account, through the cluster's OIDC provider, may assume it
    [trust] = document(found["AssumeRolePolicyDocument"])["Statement"]
    assert trust["Principal"] == {"Federated": f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{PROVIDER}"}
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert trust["Condition"]["StringEquals"] == {
        f"{PROVIDER}:sub": "system:serviceaccount:external-dns:external-dns",
        f"{PROVIDER}:aud": "sts.amazonaws.com",
    }
    # And its inline policy lets it change records in hosted zones and list zones, records and tags
    policy = document(iam.get_role_policy(RoleName=role, PolicyName=DNS_ROLE_POLICY)["PolicyDocument"])
    by_sid = {statement["Sid"]: statement for statement in policy["Statement"]}
    assert by_sid["ChangeRecords"]["Action"] == ["route53:ChangeResourceRecordSets"]
    assert by_sid["ChangeRecords"]["Resource"] == ["arn:aws:route53:::hostedzone/*"]
    assert sorted(by_sid["ReadZones"]["Action"]) == [
        "route53:ListHostedZones",
        "route53:ListResourceRecordSets",
        "route53:ListTagsForResource",
    ]
    assert by_sid["ReadZones"]["Resource"] == ["*"]
    # And external-dns's ServiceAccount names the role, its pods able to read the token EKS mounts
    assert service_account(kube)["metadata"]["annotations"] == {EKS_ROLE_ANNOTATION: arn}
    deployment = kube.live("apps/v1", "Deployment", "external-dns", "external-dns")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 65534

    # When it is reconciled again, and a second domain name comes
    publish_rows(broker, store.request_reconcile(DomainNameInstance, [first.id]))
    wait_for(lambda: (done := observed(DomainNameInstance, first.id)) and done.generation == 2)
    second = a_domain_name(broker, workload, "example.org")

    # Then nothing new was made or written in IAM: still the one role, with the same ARN
    assert second.status["aws_role_arn"] == arn and roles_tagged(iam, eks.id) == [role]
    writes = ["CreateRole", "PutRolePolicy", "UpdateAssumeRolePolicy", "TagRole"]
    assert [aws_proxy.count(write) for write in writes] == [1, 1, 0, 0]

    # When the first domain name is deleted, then the role stays: a domain name is still served there
    delete(broker, first.id)
    assert iam.get_role(RoleName=role)["Role"]["Arn"] == arn
    assert service_account(kube)["metadata"]["annotations"] == {EKS_ROLE_ANNOTATION: arn}

    # When the last one is deleted, then external-dns is removed and its role with it
    delete(broker, second.id)
    assert service_account(kube) is None
    with pytest.raises(ClientError) as raised:
        iam.get_role(RoleName=role)
    assert raised.value.response["Error"]["Code"] == "NoSuchEntity"
    assert roles_tagged(iam, eks.id) == []


def test_a_reconcile_interrupted_after_making_the_role_leaves_one_role(
    kube, broker, reconciling, cluster_calls, aws_proxy, iam
):
    # Given an EKS-backed runtime, and IAM failing the first write of the role's policy (after the role is made)
    runtime = runtime_for(kube.url)
    eks = an_eks_cluster_behind(runtime, aws_proxy.url)
    aws_proxy.fail("PutRolePolicy", "ConcurrentModification", 409, times=1)

    # When a domain name is reconciled (the actor retrying after the failure)
    done = a_domain_name(broker, a_workload(runtime), "example.com")

    # Then the retry found the role the first attempt made: one role, made once, with its policy
    role = resource_names(eks)["external_dns_role"]
    assert roles_tagged(iam, eks.id) == [role] and aws_proxy.count("CreateRole") == 1
    assert aws_proxy.count("PutRolePolicy") == 2
    assert iam.get_role_policy(RoleName=role, PolicyName=DNS_ROLE_POLICY)["PolicyDocument"]
    assert done.status["aws_role_arn"] == f"arn:aws:iam::{ACCOUNT_ID}:role/{role}"


def test_elsewhere_external_dns_gets_no_role(kube, broker, reconciling, cluster_calls, aws_endpoint, iam):
    # Given a workload on a runtime that no EKS cluster of the control plane fills in
    workload = a_workload(runtime_for(kube.url))

    # When it gets a domain name
    done = a_domain_name(broker, workload, "example.com")

    # Then external-dns runs with no role named on its ServiceAccount, and no IAM role was made
    assert done.status["aws_role_arn"] is None
    assert "annotations" not in service_account(kube)["metadata"]
    deployment = kube.live("apps/v1", "Deployment", "external-dns", "external-dns")
    assert "fsGroup" not in deployment["spec"]["template"]["spec"]["securityContext"]
    assert iam.list_roles()["Roles"] == []
