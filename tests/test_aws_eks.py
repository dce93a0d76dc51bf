"""The EKS runtime reconciler end to end: real PostgreSQL, real NATS, a real Dramatiq worker, moto over HTTP.

The account and definitions are given as reconciled (their own reconcilers
are tested elsewhere); everything the EKS instance builds is looked at
through boto3, counted by its ``threeport:object-id`` tag.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import hashlib
import http.client
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any

import boto3
import pytest
from dramatiq import Worker

from models import (
    AwsAccount,
    AwsEksKubernetesRuntimeDefinition,
    AwsEksKubernetesRuntimeInstance,
    Event,
    KubernetesRuntimeDefinition,
    KubernetesRuntimeInstance,
    store,
)
from models.base import ReconciledModel
from tasks import aws_eks, aws_irsa
from tasks import aws_eks_oidc as oidc
from tasks.actor import declare_actors
from tasks.aws_adapter import TAG_ID, TAG_KIND, Aws, AwsUnavailable, RetryPolicy
from tasks.aws_eks_build import Build
from workers.outbox_relay import publish_rows

from .aws import ACCESS_KEYS, ACCOUNT_ID
from .aws_faults import AwsRequest
from .kube import TlsMaterial
from .reconciling import wait_for

#: The real ``threeport worker`` with short lock TTL, ack wait and poll delay (see the helper).
REGION = "us-east-1"
Instance = AwsEksKubernetesRuntimeInstance


# Fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture
def aws_endpoint(request, monkeypatch, moto_server) -> str:
    """moto, reset for this test, with AWS's managed policies (AmazonEKSClusterPolicy, …) as real IAM has them."""
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")  # read when the reset rebuilds the IAM backend
    return request.getfixturevalue("aws_endpoint")


@pytest.fixture
def fast_polls(monkeypatch):
    monkeypatch.setattr(aws_eks, "POLL_DELAY", 0.2)


@pytest.fixture
def reconciling(database, broker, locks, fast_polls):
    """The reconcile actor on the ``aws`` queue, and a worker running it."""
    declare_actors(broker, ["aws"], locks=locks, min_backoff=200, max_backoff=1000)
    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()


def reconciled(model: type[ReconciledModel], fields: dict[str, Any]) -> ReconciledModel:
    """An object created and marked reconciled (its own reconciler is not what is tested here)."""
    obj = store.create(model, fields).obj
    store.write_status(model, obj.id, generation=obj.generation, status={"phase": "Reconciled"}, reconciled=True)
    return obj


def given_a_definition(endpoint: str, *, zone_count: int = 2, runtime_definition: bool = True, sizes=(1, 2, 3)):
    account = reconciled(
        AwsAccount,
        {"name": "main", "account_id": ACCOUNT_ID, "default_region": REGION, "endpoint_url": endpoint, **ACCESS_KEYS},
    )
    fields = {
        "name": "eks",
        "aws_account_id": account.id,
        "zone_count": zone_count,
        "default_node_group_instance_type": "t3.large",
        "default_node_group_minimum_size": sizes[0],
        "default_node_group_initial_size": sizes[1],
        "default_node_group_maximum_size": sizes[2],
    }
    if runtime_definition:
        kubernetes = reconciled(KubernetesRuntimeDefinition, {"name": "eks", "infra_provider": "eks"})
        fields["kubernetes_runtime_definition_id"] = kubernetes.id
    return reconciled(AwsEksKubernetesRuntimeDefinition, fields)


def create_instance(broker, definition, name: str = "prod") -> AwsEksKubernetesRuntimeInstance:
    written = store.create(Instance, {"name": name, "aws_eks_kubernetes_runtime_definition_id": definition.id})
    publish_rows(broker, written.outbox)
    return written.obj


def done(obj_id) -> Instance | None:
    """The instance once its current generation is observed (linking its runtime makes a second one)."""
    current = store.get(Instance, obj_id)
    return current if current.observed_generation == current.generation else None


def gone(obj_id) -> bool:
    return Instance.get_or_none(Instance.id == obj_id) is None


class Cloud:
    """boto3 straight at moto, to look at what the reconciler made."""

    def __init__(self, endpoint: str) -> None:
        options = dict(
            region_name=REGION,
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEYS["access_key_id"],
            aws_secret_access_key=ACCESS_KEYS["secret_access_key"],
        )
        self.ec2 = boto3.client("ec2", **options)
        self.iam = boto3.client("iam", **options)
        self.eks = boto3.client("eks", **options)

    def ec2_tagged(self, operation: str, key: str, obj_id) -> list[dict]:
        """EC2 resources tagged with ``obj_id`` (checked here too: moto does not filter every kind by tag)."""
        filters = [{"Name": f"tag:{TAG_ID}", "Values": [str(obj_id)]}]
        items = getattr(self.ec2, operation)(Filters=filters)[key]
        return [item for item in items if tags_of(item).get(TAG_ID) == str(obj_id)]

    def roles(self, obj_id) -> list[dict]:
        roles = self.iam.list_roles()["Roles"]
        return [
            r
            for r in roles
            if tags_of({"Tags": self.iam.list_role_tags(RoleName=r["RoleName"])["Tags"]}).get(TAG_ID) == str(obj_id)
        ]

    def clusters(self, obj_id) -> list[dict]:
        clusters = [self.eks.describe_cluster(name=name)["cluster"] for name in self.eks.list_clusters()["clusters"]]
        return [c for c in clusters if c.get("tags", {}).get(TAG_ID) == str(obj_id)]

    def oidc_providers(self, obj_id) -> list[dict]:
        """The IAM OIDC providers tagged with ``obj_id``, each as IAM describes it, with its ``Arn``."""
        arns = [item["Arn"] for item in self.iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]]
        providers = [
            {"Arn": arn, **self.iam.get_open_id_connect_provider(OpenIDConnectProviderArn=arn)} for arn in arns
        ]
        return [p for p in providers if tags_of(p).get(TAG_ID) == str(obj_id)]

    def node_groups(self, obj_id) -> list[dict]:
        groups = [
            self.eks.describe_nodegroup(clusterName=cluster, nodegroupName=name)["nodegroup"]
            for cluster in self.eks.list_clusters()["clusters"]
            for name in self.eks.list_nodegroups(clusterName=cluster)["nodegroups"]
        ]
        return [g for g in groups if g.get("tags", {}).get(TAG_ID) == str(obj_id)]

    def counts(self, obj_id) -> dict[str, int]:
        """How many of each kind of resource carry the object's id tag (NAT gateways: those not deleted)."""
        nat = [g for g in self.ec2_tagged("describe_nat_gateways", "NatGateways", obj_id) if g["State"] != "deleted"]
        return {
            "vpcs": len(self.ec2_tagged("describe_vpcs", "Vpcs", obj_id)),
            "subnets": len(self.ec2_tagged("describe_subnets", "Subnets", obj_id)),
            "internet_gateways": len(self.ec2_tagged("describe_internet_gateways", "InternetGateways", obj_id)),
            "elastic_ips": len(self.ec2_tagged("describe_addresses", "Addresses", obj_id)),
            "nat_gateways": len(nat),
            "route_tables": len(self.ec2_tagged("describe_route_tables", "RouteTables", obj_id)),
            "security_groups": len(self.ec2_tagged("describe_security_groups", "SecurityGroups", obj_id)),
            "roles": len(self.roles(obj_id)),
            "clusters": len(self.clusters(obj_id)),
            "oidc_providers": len(self.oidc_providers(obj_id)),
            "node_groups": len(self.node_groups(obj_id)),
        }


def tags_of(item: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags") or []}


def built(zones: int) -> dict[str, int]:
    """The counts of a whole build over ``zones`` availability zones."""
    return {
        "vpcs": 1,
        "subnets": 2 * zones,
        "internet_gateways": 1,
        "elastic_ips": 1,
        "nat_gateways": 1,
        "route_tables": 2,
        "security_groups": 1,
        "roles": 2,
        "clusters": 1,
        "oidc_providers": 1,
        "node_groups": 1,
    }


NOTHING = dict.fromkeys(built(2), 0)
#: The first request of each teardown step, in the order they must come.
TEARDOWN_ORDER = (
    "DeleteNodegroup",
    "DeleteOpenIDConnectProvider",
    "DeleteCluster",
    "DetachRolePolicy",
    "DeleteRole",
    "DeleteSecurityGroup",
    "DeleteNatGateway",
    "ReleaseAddress",
    "DisassociateRouteTable",
    "DeleteRouteTable",
    "DetachInternetGateway",
    "DeleteInternetGateway",
    "DeleteSubnet",
    "DeleteVpc",
)


# Tests -----------------------------------------------------------------------------------------------


def test_an_eks_runtime_is_built_tagged_and_fills_in_its_kubernetes_runtime(broker, reconciling, aws_endpoint):
    # Given an EKS definition over three zones, nodes t3.large from 1 to 3 (2 at first)
    definition = given_a_definition(aws_endpoint, zone_count=3)
    cloud = Cloud(aws_endpoint)

    # When an instance of it is created
    obj = create_instance(broker, definition)

    # Then it ends reconciled, with one of everything and two subnets per zone, each tagged with its kind and id
    result = wait_for(lambda: done(obj.id))
    assert (result.status["phase"], result.reconciled) == ("Reconciled", True), result.status
    assert cloud.counts(obj.id) == built(3)
    vpc = cloud.ec2_tagged("describe_vpcs", "Vpcs", obj.id)[0]
    assert tags_of(vpc)[TAG_KIND] == Instance.kind
    for attribute in ("enableDnsSupport", "enableDnsHostnames"):
        answer = cloud.ec2.describe_vpc_attribute(VpcId=vpc["VpcId"], Attribute=attribute)
        assert answer[attribute[0].upper() + attribute[1:]]["Value"] is True

    # And the subnets: a public and a private one in each of three zones, all in the VPC
    subnets = cloud.ec2_tagged("describe_subnets", "Subnets", obj.id)
    by_zone = collections.defaultdict(set)
    for subnet in subnets:
        assert subnet["VpcId"] == vpc["VpcId"]
        by_zone[subnet["AvailabilityZone"]].add(tags_of(subnet)[aws_eks.TAG_PART].split("-")[0])
    assert len(by_zone) == 3 and set(map(frozenset, by_zone.values())) == {frozenset({"public", "private"})}
    public = {s["SubnetId"] for s in subnets if tags_of(s)[aws_eks.TAG_PART].startswith("public")}
    private = {s["SubnetId"] for s in subnets} - public
    assert all(s["MapPublicIpOnLaunch"] for s in subnets if s["SubnetId"] in public)

    # And the routes: public subnets out through the attached internet gateway, private ones through the NAT gateway
    igw = cloud.ec2_tagged("describe_internet_gateways", "InternetGateways", obj.id)[0]
    assert igw["Attachments"][0]["VpcId"] == vpc["VpcId"]
    nat = cloud.ec2_tagged("describe_nat_gateways", "NatGateways", obj.id)[0]
    address = cloud.ec2_tagged("describe_addresses", "Addresses", obj.id)[0]
    assert nat["SubnetId"] in public and nat["NatGatewayAddresses"][0]["AllocationId"] == address["AllocationId"]
    routes = {}
    for table in cloud.ec2_tagged("describe_route_tables", "RouteTables", obj.id):
        default = next(r for r in table["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0")
        routes[default.get("GatewayId") or default.get("NatGatewayId")] = {a["SubnetId"] for a in table["Associations"]}
    assert routes == {igw["InternetGatewayId"]: public, nat["NatGatewayId"]: private}

    # And the roles: the cluster's trusts EKS, the nodes' trusts EC2, each with its managed policies
    roles = {r["RoleName"]: r for r in cloud.roles(obj.id)}
    names = aws_eks.resource_names(result)
    assert set(roles) == {names["cluster_role"], names["node_role"]}
    for name, service, policies in (
        (names["cluster_role"], "eks.amazonaws.com", aws_eks.CLUSTER_POLICIES),
        (names["node_role"], "ec2.amazonaws.com", aws_eks.NODE_POLICIES),
    ):
        assert roles[name]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": service}
        attached = cloud.iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        assert sorted(p["PolicyName"] for p in attached) == sorted(policies)

    # And the cluster, over every subnet with the security group, and its node group with the definition's sizes
    group = cloud.ec2_tagged("describe_security_groups", "SecurityGroups", obj.id)[0]
    cluster = cloud.clusters(obj.id)[0]
    assert cluster["name"] == names["cluster"] == f"threeport-prod-{obj.id.hex[:8]}"
    assert cluster["roleArn"] == roles[names["cluster_role"]]["Arn"]
    assert set(cluster["resourcesVpcConfig"]["subnetIds"]) == public | private
    assert cluster["resourcesVpcConfig"]["securityGroupIds"] == [group["GroupId"]]
    nodes = cloud.node_groups(obj.id)[0]
    assert nodes["scalingConfig"] == {"minSize": 1, "maxSize": 3, "desiredSize": 2}
    assert (nodes["instanceTypes"], set(nodes["subnets"])) == (["t3.large"], private)
    assert nodes["nodeRole"] == roles[names["node_role"]]["Arn"]

    # And the status says how to reach it, and the inventory names what was built
    assert result.status["cluster"]["endpoint"] == cluster["endpoint"]
    assert result.status["cluster"]["oidc_issuer"] == cluster["identity"]["oidc"]["issuer"]
    assert result.status["auth"] == {"method": "aws-iam", "cluster_name": cluster["name"], "region": REGION}
    inventory = result.status["inventory"]
    assert (inventory["vpc_id"], inventory["nat_gateway_id"]) == (vpc["VpcId"], nat["NatGatewayId"])
    assert set(inventory["public_subnet_ids"]) == public and set(inventory["private_subnet_ids"]) == private

    # And the account has an IAM OIDC provider for the cluster's issuer, for STS's audience, tagged as made for it
    issuer = cluster["identity"]["oidc"]["issuer"]
    [provider] = cloud.oidc_providers(obj.id)
    assert provider["Url"] == issuer.removeprefix("https://") and provider["ClientIDList"] == ["sts.amazonaws.com"]
    [thumbprint] = provider["ThumbprintList"]
    assert re.fullmatch("[0-9a-f]{40}", thumbprint)  # its issuer's root CA's, or the one AWS documents for EKS
    assert (tags_of(provider)[TAG_KIND], tags_of(provider)[aws_eks.TAG_PART]) == (Instance.kind, "oidc-provider")
    assert inventory["oidc_provider_arn"] == provider["Arn"]
    # And it is the very provider the roles of the cluster's service accounts trust (IRSA)
    subject = aws_irsa.service_account_subject("shop", "web")
    trust = aws_irsa.web_identity_trust(issuer=issuer, subject=subject, account_id=ACCOUNT_ID, region=REGION)
    assert json.loads(trust)["Statement"][0]["Principal"] == {"Federated": provider["Arn"]}

    # And a KubernetesRuntimeInstance named after it was made, linked and filled in
    runtime = store.get(KubernetesRuntimeInstance, result.kubernetes_runtime_instance_id)
    assert (runtime.name, runtime.location, runtime.api_endpoint) == ("prod", REGION, cluster["endpoint"])
    assert runtime.kubernetes_runtime_definition_id == definition.kubernetes_runtime_definition_id
    pem = runtime.ca_certificate.strip().splitlines()
    assert pem[0] == "-----BEGIN CERTIFICATE-----" and pem[-1] == "-----END CERTIFICATE-----"
    assert "".join(pem[1:-1]) == cluster["certificateAuthority"]["data"]


def test_reconciling_again_creates_nothing_new_even_without_the_inventory(broker, reconciling, aws_endpoint):
    # Given a built runtime
    obj = create_instance(broker, given_a_definition(aws_endpoint))
    built_once = wait_for(lambda: done(obj.id))
    cloud = Cloud(aws_endpoint)
    assert cloud.counts(obj.id) == built(2)

    # When its reconciler runs again on the same generation
    aws_eks.reconcile_eks_runtime(store.get(Instance, obj.id))

    # Then nothing new exists, and the inventory names the same resources
    assert cloud.counts(obj.id) == built(2)
    assert store.get(Instance, obj.id).status["inventory"] == built_once.status["inventory"]

    # When the inventory is lost and it runs once more, then it finds everything by its tags
    store.merge_status(Instance, obj.id, {"inventory": {}})
    aws_eks.reconcile_eks_runtime(store.get(Instance, obj.id))
    assert cloud.counts(obj.id) == built(2)
    assert store.get(Instance, obj.id).status["inventory"] == built_once.status["inventory"]
    assert KubernetesRuntimeInstance.select().count() == 1


def test_deleting_tears_everything_down_in_reverse_order_and_removes_the_row(
    broker, reconciling, aws_proxy, aws_endpoint
):
    # Given a built runtime
    obj = create_instance(broker, given_a_definition(aws_proxy.url))
    runtime_id = wait_for(lambda: done(obj.id)).kubernetes_runtime_instance_id
    cloud = Cloud(aws_endpoint)
    assert cloud.counts(obj.id) == built(2)

    # When its deletion is scheduled
    publish_rows(broker, store.schedule_deletion(Instance, obj.id).outbox)

    # Then the row goes, and nothing tagged with it is left (the NAT gateway shows as deleted, as on AWS)
    wait_for(lambda: gone(obj.id))
    assert cloud.counts(obj.id) == NOTHING
    assert cloud.iam.list_roles()["Roles"] == [] and cloud.eks.list_clusters()["clusters"] == []
    assert cloud.iam.list_open_id_connect_providers()["OpenIDConnectProviderList"] == []

    # And it went in the reverse order of the build
    deletes = [r for r in aws_proxy.requests if r.startswith(("Delete", "Release", "Detach", "Disassociate"))]
    firsts = [deletes.index(action) for action in TEARDOWN_ORDER]
    assert firsts == sorted(firsts), deletes

    # And its KubernetesRuntimeInstance stays, reaching nothing, with an event that says why
    runtime = store.get(KubernetesRuntimeInstance, runtime_id)
    assert (runtime.api_endpoint, runtime.ca_certificate) == (None, None)
    event = Event.get(Event.object_id == runtime_id)
    assert event.reason == "ClusterDeleted" and "delete this runtime" in event.message


def test_a_cluster_and_node_group_still_creating_are_polled_not_waited_for(
    broker, reconciling, aws_endpoint, monkeypatch
):
    # Given EKS as it is on AWS: a new cluster or node group is CREATING when made and at the first look
    import moto.eks.models as moto_eks

    looks = collections.Counter()

    def creating_at_first(describe):
        def describe_then_activate(self, *args, **kwargs):
            found = describe(self, *args, **kwargs)
            looks[type(found).__name__] += 1
            if looks[type(found).__name__] > 1:
                found.status = "ACTIVE"
            return found

        return describe_then_activate

    monkeypatch.setattr(moto_eks, "ACTIVE_STATUS", "CREATING")
    for name in ("describe_cluster", "describe_nodegroup"):
        monkeypatch.setattr(moto_eks.EKSBackend, name, creating_at_first(getattr(moto_eks.EKSBackend, name)))

    # When an instance is created
    obj = create_instance(broker, given_a_definition(aws_endpoint))

    # Then it ends reconciled, each wait having been a requeue whose message said what it waited for
    assert wait_for(lambda: done(obj.id)).status["phase"] == "Reconciled"
    messages = [e.message for e in Event.select().where(Event.object_id == obj.id)]
    name = aws_eks.resource_names(obj)["cluster"]
    assert f"waiting for the EKS cluster {name} to become ACTIVE (it is CREATING)" in messages
    assert f"waiting for the node group {aws_eks.NODE_GROUP} to become ACTIVE (it is CREATING)" in messages
    assert looks["Cluster"] >= 2 and looks["Nodegroup"] >= 2
    assert Cloud(aws_endpoint).counts(obj.id) == built(2)


def test_a_definition_without_an_eks_runtime_definition_fails_before_building(broker, reconciling, aws_endpoint):
    # Given an EKS definition that names no KubernetesRuntimeDefinition
    obj = create_instance(broker, given_a_definition(aws_endpoint, runtime_definition=False))

    # Then the instance fails for good, saying what is missing, and nothing was built
    failed = wait_for(lambda: done(obj.id))
    assert (failed.status["phase"], failed.creation_failed) == ("Failed", True)
    assert "names no kubernetes_runtime_definition" in failed.status["message"]
    assert Cloud(aws_endpoint).counts(obj.id) == NOTHING


def test_a_missing_permission_is_a_permanent_failure_naming_the_code(broker, reconciling, aws_proxy, aws_endpoint):
    # Given credentials that may not create EKS clusters
    aws_proxy.fail("CreateCluster", "AccessDeniedException", 403, times=None)

    # When an instance is created
    obj = create_instance(broker, given_a_definition(aws_proxy.url))

    # Then it fails for good, naming the call and the code, without retrying it
    failed = wait_for(lambda: done(obj.id))
    assert (failed.status["phase"], failed.creation_failed, failed.reconciled) == ("Failed", True, False)
    assert "eks:create_cluster: AccessDeniedException" in failed.status["message"]
    time.sleep(0.5)
    assert aws_proxy.count("CreateCluster") == 1

    # And what was built before stays in the inventory, so deleting the runtime removes it all
    assert failed.status["inventory"]["vpc_id"] and failed.status["inventory"]["node_role_arn"]
    publish_rows(broker, store.schedule_deletion(Instance, obj.id).outbox)
    wait_for(lambda: gone(obj.id))
    assert Cloud(aws_endpoint).counts(obj.id) == NOTHING


def test_throttling_is_retried(broker, reconciling, aws_proxy, aws_endpoint):
    # Given EC2 throttling the first two CreateVpc calls
    aws_proxy.fail("CreateVpc", "RequestLimitExceeded", 503, times=2)

    # When an instance is created, then it is built all the same, with one VPC made on the third try
    obj = create_instance(broker, given_a_definition(aws_proxy.url))
    assert wait_for(lambda: done(obj.id)).status["phase"] == "Reconciled"
    assert aws_proxy.count("CreateVpc") == 3
    assert Cloud(aws_endpoint).counts(obj.id) == built(2)


@pytest.mark.parametrize("step, kind", [("CreateNatGateway", "nat_gateways"), ("CreateCluster", "clusters")])
def test_a_worker_killed_mid_step_leaves_no_duplicates(broker, start_worker, aws_proxy, aws_endpoint, step, kind):
    # Given a worker process, and AWS holding the step's request unanswered
    definition = given_a_definition(aws_proxy.url)
    doomed = start_worker()
    aws_proxy.hold(step)

    # When an instance is created, and its worker is killed (SIGKILL) while that request is held
    obj = create_instance(broker, definition)
    aws_proxy.wait_held(timeout=30)
    inventory = store.get(Instance, obj.id).status["inventory"]
    assert inventory["vpc_id"] and len(inventory["private_subnet_ids"]) == 2  # the steps before were recorded
    doomed.kill()
    doomed.wait()

    # And AWS carries the request out anyway, the answer going nowhere
    aws_proxy.release()
    cloud = Cloud(aws_endpoint)
    wait_for(lambda: cloud.counts(obj.id)[kind] == 1)

    # And another worker takes over
    start_worker()

    # Then the build resumes to the end, with exactly one of everything: what the dead worker made was found
    result = wait_for(lambda: done(obj.id), timeout=60)
    assert result.status["phase"] == "Reconciled", result.status
    assert cloud.counts(obj.id) == built(2)
    assert aws_proxy.count(step) == 1
    assert KubernetesRuntimeInstance.select().count() == 1


def build_of(obj: Instance, *, attempts: int = 6) -> Build:
    """What one reconcile of ``obj`` works with, its AWS calls tried ``attempts`` times."""
    definition = store.get(AwsEksKubernetesRuntimeDefinition, obj.aws_eks_kubernetes_runtime_definition_id)
    account = store.get(AwsAccount, definition.aws_account_id)
    aws = Aws.for_account(account, REGION, retry=RetryPolicy(attempts=attempts, initial=0.01))
    return Build(store.get(Instance, obj.id), definition, aws, poll_delay=0.2)


def deliver(request: AwsRequest, endpoint: str) -> None:
    """Send a request the proxy holds straight to moto, as it came: AWS carries it out."""
    url = urllib.parse.urlsplit(endpoint)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request(request.method, f"{request.path}?{request.query}", request.body, request.headers)
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_an_oidc_provider_made_by_a_reconcile_that_died_is_found_not_made_again(database, aws_proxy, aws_endpoint):
    # Given an instance, its cluster ACTIVE as EKS describes it, and IAM holding the request that makes its provider
    obj = store.create(
        Instance, {"name": "prod", "aws_eks_kubernetes_runtime_definition_id": given_a_definition(aws_proxy.url).id}
    ).obj
    issuer = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
    cluster = {"name": aws_eks.resource_names(obj)["cluster"], "identity": {"oidc": {"issuer": issuer}}}
    aws_proxy.hold("CreateOpenIDConnectProvider")

    # When a reconcile asks for the provider and dies before hearing back: IAM makes it, the answer goes nowhere
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        doomed = pool.submit(oidc.oidc_provider, build_of(obj, attempts=1), cluster)
        deliver(aws_proxy.wait_held(timeout=10), aws_endpoint)
        aws_proxy.release(drop=True)
        with pytest.raises(AwsUnavailable):
            doomed.result(timeout=10)
    assert "oidc_provider_arn" not in store.get(Instance, obj.id).status.get("inventory", {})

    # And the object is reconciled again
    arn = oidc.oidc_provider(build_of(obj), cluster)

    # Then the provider IAM made is the one: found for the issuer and recorded, none made again
    [provider] = Cloud(aws_endpoint).oidc_providers(obj.id)
    assert provider["Arn"] == arn == store.get(Instance, obj.id).status["inventory"]["oidc_provider_arn"]
    assert aws_proxy.count("CreateOpenIDConnectProvider") == 1


@pytest.mark.parametrize(
    "data",
    [
        base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode(),
        base64.b64encode(b"\x30\x82\x01\x0a" * 20).decode(),
    ],
)
def test_the_clusters_ca_data_becomes_pem(data):
    pem = aws_eks.certificate_pem(data)
    lines = pem.strip().splitlines()
    assert lines[0] == "-----BEGIN CERTIFICATE-----" and lines[-1] == "-----END CERTIFICATE-----"
    assert all(len(line) <= 64 for line in lines)


def test_an_issuers_thumbprint_is_of_the_last_certificate_it_presents(tmp_path):
    # Given an OIDC issuer served over TLS, presenting its certificate and then its CA's
    material = TlsMaterial.generate()
    (tmp_path / "chain.pem").write_text(material.server_certificate + material.ca)
    (tmp_path / "key.pem").write_text(material.server_key)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    issuer = f"https://127.0.0.1:{listener.getsockname()[1]}/id/EXAMPLE"

    def serve(handshakes: int) -> None:
        for _ in range(handshakes):
            connection, _ = listener.accept()
            try:
                served.wrap_socket(connection, server_side=True).close()
            except OSError:
                connection.close()  # a client that did not trust it

    threading.Thread(target=serve, args=(2,), daemon=True).start()

    # When its thumbprint is taken by a client trusting that CA, then it is the SHA-1 of the CA's certificate
    trusting = ssl.create_default_context(cadata=material.ca)
    ca = hashlib.sha1(ssl.PEM_cert_to_DER_cert(material.ca)).hexdigest()
    assert oidc.issuer_thumbprint(issuer, context=trusting, timeout=5) == ca

    # When the chain cannot be verified, or the issuer not reached, then it is the one AWS documents for EKS
    assert oidc.issuer_thumbprint(issuer, timeout=5) == oidc.EKS_OIDC_THUMBPRINT
    listener.close()
    assert oidc.issuer_thumbprint(issuer, timeout=5) == oidc.EKS_OIDC_THUMBPRINT
    assert oidc.issuer_thumbprint("https://oidc.eks.invalid/id/EXAMPLE", timeout=5) == oidc.EKS_OIDC_THUMBPRINT


def test_an_eks_runtime_is_reached_with_iam_tokens_presigned_for_its_cluster(database):
    from tasks.kubernetes_runtimes import credentials_of

    # Given an EKS runtime as the EKS reconciler leaves it: endpoint and CA on the runtime, auth in the EKS status
    account = store.create(
        AwsAccount, {"name": "a", "account_id": ACCOUNT_ID, "default_region": "eu-west-1"} | ACCESS_KEYS
    ).obj
    runtime_definition = store.create(KubernetesRuntimeDefinition, {"name": "eks", "infra_provider": "eks"}).obj
    runtime = store.create(
        KubernetesRuntimeInstance,
        {"name": "r", "kubernetes_runtime_definition_id": runtime_definition.id, "api_endpoint": "https://x.eks"},
    ).obj
    definition = store.create(
        AwsEksKubernetesRuntimeDefinition,
        {"name": "d", "aws_account_id": account.id, "kubernetes_runtime_definition_id": runtime_definition.id},
    ).obj
    eks = store.create(
        AwsEksKubernetesRuntimeInstance,
        {
            "name": "e",
            "aws_eks_kubernetes_runtime_definition_id": definition.id,
            "kubernetes_runtime_instance_id": runtime.id,
        },
    ).obj
    auth = {"method": "aws-iam", "cluster_name": "threeport-e-1234", "region": "eu-west-1"}
    store.merge_status(AwsEksKubernetesRuntimeInstance, eks.id, {"auth": auth})

    # When its credentials are made, then each token is a presigned STS URL naming the cluster in a signed header
    token = credentials_of(store.get(KubernetesRuntimeInstance, runtime.id)).token_source()
    assert token.startswith("k8s-aws-v1.")
    url = urllib.parse.urlparse(base64.urlsafe_b64decode(token[len("k8s-aws-v1.") :] + "==").decode())
    query = urllib.parse.parse_qs(url.query)
    assert (url.hostname, query["Action"], query["X-Amz-SignedHeaders"]) == (
        "sts.eu-west-1.amazonaws.com",
        ["GetCallerIdentity"],
        ["host;x-k8s-aws-id"],
    )
    assert query["X-Amz-Credential"][0].startswith(ACCESS_KEYS["access_key_id"] + "/")
