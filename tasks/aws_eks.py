"""The AwsEksKubernetesRuntimeInstance reconciler: an EKS cluster and everything it needs, step by step.

A build runs fixed steps in order (VPC, subnets, internet gateway, NAT
gateway, route tables, security group, IAM roles, cluster, the cluster's IAM
OIDC provider, node group, then the KubernetesRuntimeInstance). Each step
first finds what an earlier attempt made (by the ``threeport:object-id``/
``threeport:part`` tags, or by a deterministic name, URL or client token)
and records the ids in the status ``inventory`` right after, so a worker
killed between two steps leaves a build the next reconcile resumes instead
of duplicating. Waiting on AWS (a cluster takes minutes) never holds a
thread: a step whose resource is not ready raises
``TemporaryError(delay=POLL_DELAY)`` and the actor requeues the object.
Deletion runs the teardown in reverse order, from the inventory and the tags
both, tolerating whatever is gone already.

This module says the order; the steps are in :mod:`tasks.aws_eks_network`
(the VPC and what is in it), :mod:`tasks.aws_eks_cluster` (IAM roles,
cluster, node group, runtime) and :mod:`tasks.aws_eks_oidc` (the OIDC
provider IRSA roles trust), and what they share in :mod:`tasks.aws_eks_build`.

The cluster is reached with IAM-signed tokens, made at connect time; the
status says how: ``auth`` = ``{"method": "aws-iam", "cluster_name", "region"}``.
When the cluster goes, its KubernetesRuntimeInstance stays (the EKS row
references it until it is removed, so it cannot be deleted first): its
endpoint and CA are cleared and an event on it says why; delete it yourself.
"""

from __future__ import annotations

from models.aws import AwsEksKubernetesRuntimeInstance

from . import aws_eks_cluster as eks
from . import aws_eks_network as network
from . import aws_eks_oidc as oidc
from .aws_eks_build import TAG_PART, Build, resource_names
from .aws_eks_cluster import CLUSTER_POLICIES, NODE_GROUP, NODE_POLICIES, certificate_pem
from .aws_eks_network import VPC_CIDR
from .reconcilers import Reconciler, register

__all__ = [
    "POLL_DELAY",
    "VPC_CIDR",
    "TAG_PART",
    "reconcile_eks_runtime",
    "delete_eks_runtime",
    "resource_names",
    "certificate_pem",
    "CLUSTER_POLICIES",
    "NODE_POLICIES",
    "NODE_GROUP",
]

#: Seconds between two looks at something AWS is still creating or deleting (tests make it small).
POLL_DELAY = 30.0

Model = AwsEksKubernetesRuntimeInstance


def reconcile_eks_runtime(obj: AwsEksKubernetesRuntimeInstance) -> None:
    """Build (or finish building) the cluster of ``obj`` and fill in its KubernetesRuntimeInstance."""
    build = Build.of(obj, poll_delay=POLL_DELAY)
    build.check_runtime_definition()
    build.check_region()
    vpc_id = network.vpc(build)
    public, private = network.subnets(build, vpc_id)
    igw_id = network.internet_gateway(build, vpc_id)
    nat_id = network.nat_gateway(build, vpc_id, public[0])
    network.route_table(build, "public-routes", vpc_id, public, {"GatewayId": igw_id})
    network.route_table(build, "private-routes", vpc_id, private, {"NatGatewayId": nat_id})
    group_id = network.security_group(build, vpc_id)
    cluster_role = eks.role(build, "cluster_role", "eks.amazonaws.com", CLUSTER_POLICIES)
    node_role = eks.role(build, "node_role", "ec2.amazonaws.com", NODE_POLICIES)
    cluster = eks.active_cluster(build, cluster_role, public + private, group_id)
    oidc.oidc_provider(build, cluster)
    eks.active_node_group(build, node_role, private)
    eks.runtime(build, cluster)


def delete_eks_runtime(obj: AwsEksKubernetesRuntimeInstance) -> None:
    """Tear down what the build made, in reverse order; requeues itself while AWS is still deleting."""
    build = Build.of(obj, poll_delay=POLL_DELAY)
    eks.delete_node_group(build)
    oidc.delete_oidc_provider(build)
    eks.delete_cluster(build)
    eks.delete_roles(build)
    network.delete_security_groups(build)
    network.delete_nat_gateways(build)
    network.release_addresses(build)
    network.delete_route_tables(build)
    network.delete_internet_gateways(build)
    network.delete_subnets(build)
    network.delete_vpcs(build)
    eks.release_runtime(build)


register(Model.kind, Reconciler(reconcile=reconcile_eks_runtime, delete=delete_eks_runtime))
