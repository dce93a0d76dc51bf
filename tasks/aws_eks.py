"""The AwsEksKubernetesRuntimeInstance reconciler: an EKS cluster and everything it needs, step by step.

A build runs fixed steps in order (VPC, subnets, internet gateway, NAT
gateway, route tables, security group, IAM roles, cluster, node group, then
the KubernetesRuntimeInstance). Each step first finds what an earlier attempt
made (by the ``threeport:object-id``/``threeport:part`` tags, or by a
deterministic name or client token) and records the ids in the status
``inventory`` right after, so a worker killed between two steps leaves a
build the next reconcile resumes instead of duplicating. Waiting on AWS
(a cluster takes minutes) never holds a thread: a step whose resource is
not ready raises ``TemporaryError(delay=POLL_DELAY)`` and the actor requeues
the object. Deletion runs the teardown in reverse order, from the inventory
and the tags both, tolerating whatever is gone already.

The cluster is reached with IAM-signed tokens, made at connect time; the
status says how: ``auth`` = ``{"method": "aws-iam", "cluster_name", "region"}``.
When the cluster goes, its KubernetesRuntimeInstance stays (the EKS row
references it until it is removed, so it cannot be deleted first): its
endpoint and CA are cleared and an event on it says why; delete it yourself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import re
from typing import Any, Callable, Iterator, Optional

from models import store
from models.aws import AwsAccount, AwsEksKubernetesRuntimeDefinition, AwsEksKubernetesRuntimeInstance
from models.errors import Conflict, InvalidObject, NotFound
from models.events import WARNING, record_event
from models.kubernetes import KubernetesRuntimeDefinition, KubernetesRuntimeInstance

from .aws_adapter import TAG_ID, Aws, AwsConflict, AwsError, AwsNotFound, tag_filters, tags_for
from .errors import PermanentError, TemporaryError
from .reconcilers import Reconciler, register

__all__ = [
    "POLL_DELAY",
    "VPC_CIDR",
    "TAG_PART",
    "reconcile_eks_runtime",
    "delete_eks_runtime",
    "resource_names",
    "certificate_pem",
]

#: Seconds between two looks at something AWS is still creating or deleting (tests make it small).
POLL_DELAY = 30.0
#: The VPC's address range; each subnet is a /20 of it (public ones first, private ones from the middle).
VPC_CIDR = "10.0.0.0/16"
#: Tag key saying which part of the build a resource is (``vpc``, ``public-subnet-us-east-1a``, …).
TAG_PART = "threeport:part"
#: Availability zones (by zone id) where EKS cannot place a control plane.
EKS_UNSUPPORTED_ZONE_IDS = frozenset({"use1-az3", "usw1-az2", "cac1-az3"})
#: AWS-managed policies of the two roles, by role.
CLUSTER_POLICIES = ("AmazonEKSClusterPolicy",)
NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")
#: The node group every cluster gets.
NODE_GROUP = "threeport-default"
#: Error codes that mean "something still uses it": deleting again later will work.
IN_USE_CODES = frozenset({"DependencyViolation", "InvalidIPAddress.InUse", "DeleteConflict", "ResourceInUseException"})
#: Error codes that mean there is nothing left to undo.
GONE_CODES = frozenset({"Gateway.NotAttached"})

Model = AwsEksKubernetesRuntimeInstance


def resource_names(obj: AwsEksKubernetesRuntimeInstance) -> dict[str, str]:
    """The deterministic names of the cluster, its roles and security group: ``threeport-<name>-<short id>…``."""
    slug = re.sub(r"[^A-Za-z0-9-]+", "-", obj.name).strip("-")[:30] or "eks"
    base = f"threeport-{slug}-{obj.id.hex[:8]}"
    return {
        "cluster": base,
        "cluster_role": f"{base}-cluster",
        "node_role": f"{base}-node",
        "security_group": f"{base}-cluster",
    }


def certificate_pem(data: str) -> str:
    """The PEM text of an EKS ``certificateAuthority.data`` (base64 of a PEM, or of DER bytes)."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PermanentError("the cluster's certificate authority data is not base64") from exc
    if raw.lstrip().startswith(b"-----BEGIN"):
        return raw.decode("ascii")
    body = base64.b64encode(raw).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


# The build --------------------------------------------------------------------------------


def reconcile_eks_runtime(obj: AwsEksKubernetesRuntimeInstance) -> None:
    """Build (or finish building) the cluster of ``obj`` and fill in its KubernetesRuntimeInstance."""
    build = _Build.of(obj)
    build.check_runtime_definition()
    build.check_region()
    vpc_id = build.vpc()
    public, private = build.subnets(vpc_id)
    igw_id = build.internet_gateway(vpc_id)
    nat_id = build.nat_gateway(vpc_id, public[0])
    build.route_table("public-routes", vpc_id, public, {"GatewayId": igw_id})
    build.route_table("private-routes", vpc_id, private, {"NatGatewayId": nat_id})
    group_id = build.security_group(vpc_id)
    cluster_role = build.role("cluster_role", "eks.amazonaws.com", CLUSTER_POLICIES)
    node_role = build.role("node_role", "ec2.amazonaws.com", NODE_POLICIES)
    cluster = build.cluster(cluster_role, public + private, group_id)
    build.node_group(node_role, private)
    build.runtime(cluster)


class _Build:
    """One reconcile of one object: its AWS door, its names, and the inventory recorded so far."""

    def __init__(
        self, obj: AwsEksKubernetesRuntimeInstance, definition: AwsEksKubernetesRuntimeDefinition, aws: Aws
    ) -> None:
        self.obj = obj
        self.definition = definition
        self.aws = aws
        self.names = resource_names(obj)
        self.inventory: dict[str, Any] = dict((obj.status or {}).get("inventory") or {})

    @classmethod
    def of(cls, obj: AwsEksKubernetesRuntimeInstance) -> "_Build":
        definition = store.get(AwsEksKubernetesRuntimeDefinition, obj.aws_eks_kubernetes_runtime_definition_id)
        account = store.get(AwsAccount, definition.aws_account_id)
        region = (obj.status or {}).get("inventory", {}).get("region") if obj.deletion_scheduled else None
        return cls(obj, definition, Aws.for_account(account, region or obj.region))

    @property
    def region(self) -> str:
        return self.aws.region

    def record(self, message: str, **entries: Any) -> None:
        """Add ``entries`` to the inventory and save it (whatever the generation), with a progress message."""
        if all(key in self.inventory and self.inventory[key] == value for key, value in entries.items()):
            return  # known already (a later reconcile going over built steps): nothing to write
        self.inventory.update(entries)
        store.merge_status(Model, self.obj.id, {"inventory": self.inventory, "message": message})

    def forget(self, message: str, *keys: str) -> None:
        """Drop ``keys`` from the inventory (what was deleted) and save it."""
        if not any(key in self.inventory for key in keys):
            return
        for key in keys:
            self.inventory.pop(key, None)
        store.merge_status(Model, self.obj.id, {"inventory": self.inventory, "message": message})

    def wait(self, message: str) -> TemporaryError:
        return TemporaryError(message, delay=POLL_DELAY)

    def ec2(self, operation: str, **params: Any) -> dict[str, Any]:
        return self.aws.call("ec2", operation, **params)

    # Checks before anything is built -------------------------------------------------------

    def check_runtime_definition(self) -> None:
        """The runtime this cluster becomes must be an ``eks`` one (nothing is built otherwise)."""
        if self.obj.kubernetes_runtime_instance_id is not None:
            runtime = store.get(KubernetesRuntimeInstance, self.obj.kubernetes_runtime_instance_id)
            definition_id = runtime.kubernetes_runtime_definition_id
        else:
            definition_id = self.definition.kubernetes_runtime_definition_id
        if definition_id is None:
            raise PermanentError(
                f"AwsEksKubernetesRuntimeDefinition {self.definition.name!r} names no kubernetes_runtime_definition "
                "(give one with infra_provider 'eks')"
            )
        runtime_definition = store.get(KubernetesRuntimeDefinition, definition_id)
        if runtime_definition.infra_provider != "eks":
            raise PermanentError(
                f"KubernetesRuntimeDefinition {runtime_definition.name!r} has infra_provider "
                f"{runtime_definition.infra_provider!r}, not 'eks'"
            )

    def check_region(self) -> None:
        built_in = self.inventory.get("region")
        if built_in and built_in != self.region and self.inventory.get("vpc_id"):
            raise PermanentError(f"the cluster is built in {built_in}; its region cannot change to {self.region}")
        self.record(f"building in {self.region}", region=self.region)

    # Finding before making -------------------------------------------------------------------

    def tag_specifications(self, resource_type: str, part: str, **extra: str) -> list[dict[str, Any]]:
        tags = tags_for(self.obj, Name=f"{self.names['cluster']}-{part}", **{TAG_PART: part}, **extra)
        return [{"ResourceType": resource_type, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]

    def find(self, operation: str, key: str, part: Optional[str] = None, filters: tuple = ()) -> list[dict]:
        """EC2 resources of this object (``part`` of it when given), checked here too: not every API filters."""
        wanted = [*tag_filters(self.obj), *([{"Name": f"tag:{TAG_PART}", "Values": [part]}] if part else [])]
        items = self.ec2(operation, Filters=[*wanted, *filters]).get(key, [])
        return [item for item in items if _ours(item, self.obj, part)]

    def ensure(self, part: str, describe: str, key: str, create: Callable[[], dict], filters: tuple = ()) -> dict:
        """The EC2 resource tagged as ``part`` of this object: found, or made by ``create``."""
        found = self.find(describe, key, part, filters)
        if found:
            return found[0]
        try:
            return create()
        except AwsConflict:  # made meanwhile: use that one
            found = self.find(describe, key, part, filters)
            if not found:
                raise
            return found[0]

    # Network -----------------------------------------------------------------------------------

    def vpc(self) -> str:
        vpc = self.ensure(
            "vpc",
            "describe_vpcs",
            "Vpcs",
            lambda: self.ec2("create_vpc", CidrBlock=VPC_CIDR, TagSpecifications=self.tag_specifications("vpc", "vpc"))[
                "Vpc"
            ],
        )
        vpc_id = vpc["VpcId"]
        for attribute in ("EnableDnsSupport", "EnableDnsHostnames"):  # one attribute per call
            self.ec2("modify_vpc_attribute", VpcId=vpc_id, **{attribute: {"Value": True}})
        self.record(f"VPC {vpc_id} ready", vpc_id=vpc_id)
        return vpc_id

    def zones(self) -> list[str]:
        """The first ``zone_count`` zones of the region EKS can use (the recorded ones once chosen)."""
        count = self.definition.zone_count
        if len(self.inventory.get("availability_zones") or []) >= count:
            return self.inventory["availability_zones"][:count]
        answer = self.ec2("describe_availability_zones", Filters=[{"Name": "state", "Values": ["available"]}])
        usable = sorted(
            zone["ZoneName"]
            for zone in answer.get("AvailabilityZones", [])
            if zone.get("ZoneType", "availability-zone") == "availability-zone"
            and zone.get("ZoneId") not in EKS_UNSUPPORTED_ZONE_IDS
        )
        if len(usable) < count:
            raise PermanentError(f"{self.region} has {len(usable)} availability zones EKS can use, not {count}")
        self.record(f"availability zones {', '.join(usable[:count])}", availability_zones=usable[:count])
        return usable[:count]

    def subnets(self, vpc_id: str) -> tuple[list[str], list[str]]:
        """One public and one private subnet per zone; returns their ids (public, private)."""
        blocks = list(ipaddress.ip_network(VPC_CIDR).subnets(new_prefix=20))
        tiers = {"public": [], "private": []}
        for index, zone in enumerate(self.zones()):
            for tier, block, role in (
                ("public", blocks[index], "kubernetes.io/role/elb"),
                ("private", blocks[len(blocks) // 2 + index], "kubernetes.io/role/internal-elb"),
            ):
                subnet = self._subnet(vpc_id, f"{tier}-subnet-{zone}", zone, str(block), {role: "1"})
                if tier == "public" and not subnet.get("MapPublicIpOnLaunch"):
                    self.ec2(
                        "modify_subnet_attribute", SubnetId=subnet["SubnetId"], MapPublicIpOnLaunch={"Value": True}
                    )
                tiers[tier].append(subnet["SubnetId"])
                self.record(
                    f"{tier} subnet {subnet['SubnetId']} in {zone} ready",
                    public_subnet_ids=list(tiers["public"]),
                    private_subnet_ids=list(tiers["private"]),
                )
        return tiers["public"], tiers["private"]

    def _subnet(self, vpc_id: str, part: str, zone: str, block: str, role_tag: dict[str, str]) -> dict:
        cluster_tag = {f"kubernetes.io/cluster/{self.names['cluster']}": "shared"}
        return self.ensure(
            part,
            "describe_subnets",
            "Subnets",
            lambda: self.ec2(
                "create_subnet",
                VpcId=vpc_id,
                AvailabilityZone=zone,
                CidrBlock=block,
                TagSpecifications=self.tag_specifications("subnet", part, **role_tag, **cluster_tag),
            )["Subnet"],
            filters=({"Name": "vpc-id", "Values": [vpc_id]},),
        )

    def internet_gateway(self, vpc_id: str) -> str:
        gateway = self.ensure(
            "internet-gateway",
            "describe_internet_gateways",
            "InternetGateways",
            lambda: self.ec2(
                "create_internet_gateway",
                TagSpecifications=self.tag_specifications("internet-gateway", "internet-gateway"),
            )["InternetGateway"],
        )
        gateway_id = gateway["InternetGatewayId"]
        if not any(a.get("VpcId") == vpc_id for a in gateway.get("Attachments", [])):
            self.ec2("attach_internet_gateway", InternetGatewayId=gateway_id, VpcId=vpc_id)
        self.record(f"internet gateway {gateway_id} attached", internet_gateway_id=gateway_id)
        return gateway_id

    def nat_gateway(self, vpc_id: str, subnet_id: str) -> str:
        """One NAT gateway, in the first public subnet, with an Elastic IP of its own; waits until available."""
        address = self.ensure(
            "nat-address",
            "describe_addresses",
            "Addresses",
            lambda: self.ec2(
                "allocate_address", Domain="vpc", TagSpecifications=self.tag_specifications("elastic-ip", "nat-address")
            ),
        )
        self.record(f"Elastic IP {address['AllocationId']} ready", elastic_ip_allocation_id=address["AllocationId"])
        gateway = self.ensure(
            "nat-gateway",
            "describe_nat_gateways",
            "NatGateways",
            lambda: self.ec2(
                "create_nat_gateway",
                SubnetId=subnet_id,
                AllocationId=address["AllocationId"],
                ClientToken=f"{self.obj.id}-nat",
                TagSpecifications=self.tag_specifications("natgateway", "nat-gateway"),
            )["NatGateway"],
            filters=(
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "state", "Values": ["pending", "available", "failed"]},
            ),
        )
        gateway_id, state = gateway["NatGatewayId"], gateway.get("State", "pending")
        self.record(f"NAT gateway {gateway_id} is {state}", nat_gateway_id=gateway_id)
        if state == "failed":
            why = f"{gateway.get('FailureCode', '')}: {gateway.get('FailureMessage', '')}"
            raise PermanentError(f"NAT gateway {gateway_id} failed ({why}); delete this runtime and create it again")
        if state != "available":
            raise self.wait(f"waiting for the NAT gateway {gateway_id} to become available (it is {state})")
        return gateway_id

    def route_table(self, part: str, vpc_id: str, subnet_ids: list[str], target: dict[str, str]) -> str:
        """A route table sending 0.0.0.0/0 to ``target``, associated with ``subnet_ids``."""
        table = self.ensure(
            part,
            "describe_route_tables",
            "RouteTables",
            lambda: self.ec2(
                "create_route_table", VpcId=vpc_id, TagSpecifications=self.tag_specifications("route-table", part)
            )["RouteTable"],
            filters=({"Name": "vpc-id", "Values": [vpc_id]},),
        )
        table_id = table["RouteTableId"]
        default = [r for r in table.get("Routes", []) if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
        if not default:
            self.ec2("create_route", RouteTableId=table_id, DestinationCidrBlock="0.0.0.0/0", **target)
        elif any(default[0].get(key) != value for key, value in target.items()):
            self.ec2("replace_route", RouteTableId=table_id, DestinationCidrBlock="0.0.0.0/0", **target)
        associated = {a.get("SubnetId") for a in table.get("Associations", [])}
        for subnet_id in subnet_ids:
            if subnet_id not in associated:
                self.ec2("associate_route_table", RouteTableId=table_id, SubnetId=subnet_id)
        key = part.replace("-routes", "_route_table_id")
        self.record(f"route table {table_id} ({part}) ready", **{key: table_id})
        return table_id

    def security_group(self, vpc_id: str) -> str:
        """The cluster's security group: its members reach each other on every port."""
        group = self.ensure(
            "cluster-security-group",
            "describe_security_groups",
            "SecurityGroups",
            lambda: self.ec2(
                "create_security_group",
                GroupName=self.names["security_group"],
                Description=f"threeport EKS cluster {self.names['cluster']}",
                VpcId=vpc_id,
                TagSpecifications=self.tag_specifications("security-group", "cluster-security-group"),
            ),
            filters=({"Name": "vpc-id", "Values": [vpc_id]},),
        )
        group_id = group["GroupId"]
        itself = {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}
        if not any(_allows_itself(rule, group_id) for rule in group.get("IpPermissions", [])):
            with contextlib.suppress(AwsConflict):  # InvalidPermission.Duplicate: there already
                self.ec2("authorize_security_group_ingress", GroupId=group_id, IpPermissions=[itself])
        self.record(f"security group {group_id} ready", security_group_id=group_id)
        return group_id

    # IAM ---------------------------------------------------------------------------------------

    def role(self, which: str, service: str, policies: tuple[str, ...]) -> str:
        """The role ``which`` (``cluster_role``/``node_role``) that ``service`` assumes, with ``policies``: its ARN."""
        name = self.names[which]
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
        try:
            role = self.aws.call("iam", "get_role", RoleName=name)["Role"]
        except AwsNotFound:
            tags = tags_for(self.obj, **{TAG_PART: which.replace("_", "-")})
            try:
                role = self.aws.call(
                    "iam",
                    "create_role",
                    RoleName=name,
                    AssumeRolePolicyDocument=json.dumps(trust),
                    Description=f"threeport EKS cluster {self.names['cluster']}",
                    Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
                )["Role"]
            except AwsConflict:
                role = self.aws.call("iam", "get_role", RoleName=name)["Role"]
        owner = {t["Key"]: t["Value"] for t in role.get("Tags", [])}.get(TAG_ID)
        if owner is not None and owner != str(self.obj.id):
            raise PermanentError(f"IAM role {name} belongs to another threeport object ({owner})")
        partition = role["Arn"].split(":")[1]
        for policy in policies:
            self.aws.call(
                "iam", "attach_role_policy", RoleName=name, PolicyArn=f"arn:{partition}:iam::aws:policy/{policy}"
            )
        self.record(f"IAM role {name} ready", **{f"{which}_name": name, f"{which}_arn": role["Arn"]})
        return role["Arn"]

    # EKS ---------------------------------------------------------------------------------------

    def cluster(self, role_arn: str, subnet_ids: list[str], group_id: str) -> dict[str, Any]:
        """The EKS cluster, once ACTIVE (until then the object is requeued to look again)."""
        name = self.names["cluster"]
        cluster = self.describe_cluster(name)
        if cluster is None:
            try:
                cluster = self.aws.call(
                    "eks",
                    "create_cluster",
                    name=name,
                    roleArn=role_arn,
                    resourcesVpcConfig={
                        "subnetIds": subnet_ids,
                        "securityGroupIds": [group_id],
                        "endpointPublicAccess": True,
                        "endpointPrivateAccess": True,
                    },
                    clientRequestToken=f"{self.obj.id}-cluster",
                    tags=tags_for(self.obj, **{TAG_PART: "cluster"}),
                )["cluster"]
            except AwsConflict:  # ResourceInUseException: made meanwhile
                cluster = self.describe_cluster(name)
                if cluster is None:
                    raise
        owner = (cluster.get("tags") or {}).get(TAG_ID)
        if owner is not None and owner != str(self.obj.id):
            raise PermanentError(f"EKS cluster {name} belongs to another threeport object ({owner})")
        state = cluster.get("status", "CREATING")
        self.record(f"EKS cluster {name} is {state}", cluster_name=name, cluster_arn=cluster.get("arn"))
        if state == "FAILED":
            raise PermanentError(f"EKS cluster {name} FAILED; delete this runtime and create it again")
        if state != "ACTIVE":
            raise self.wait(f"waiting for the EKS cluster {name} to become ACTIVE (it is {state})")
        return cluster

    def describe_cluster(self, name: str) -> Optional[dict[str, Any]]:
        try:
            return self.aws.call("eks", "describe_cluster", name=name)["cluster"]
        except AwsNotFound:
            return None

    def node_group(self, role_arn: str, subnet_ids: list[str]) -> dict[str, Any]:
        """The managed node group with the definition's sizes, once ACTIVE."""
        cluster, definition = self.names["cluster"], self.definition
        scaling = {
            "minSize": definition.default_node_group_minimum_size,
            "maxSize": definition.default_node_group_maximum_size,
            "desiredSize": definition.default_node_group_initial_size,
        }
        group = self.describe_node_group(cluster)
        if group is None:
            try:
                group = self.aws.call(
                    "eks",
                    "create_nodegroup",
                    clusterName=cluster,
                    nodegroupName=NODE_GROUP,
                    scalingConfig=scaling,
                    subnets=subnet_ids,
                    instanceTypes=[definition.default_node_group_instance_type],
                    nodeRole=role_arn,
                    clientRequestToken=f"{self.obj.id}-node-group",
                    tags=tags_for(self.obj, **{TAG_PART: "node-group"}),
                )["nodegroup"]
            except AwsConflict:
                group = self.describe_node_group(cluster)
                if group is None:
                    raise
        state = group.get("status", "CREATING")
        self.record(f"node group {NODE_GROUP} is {state}", node_group_name=NODE_GROUP)
        if state in ("CREATE_FAILED", "DELETE_FAILED", "DEGRADED"):
            issues = "; ".join(
                f"{i.get('code')}: {i.get('message')}" for i in group.get("health", {}).get("issues", [])
            )
            raise PermanentError(f"node group {NODE_GROUP} is {state}" + (f" ({issues})" if issues else ""))
        if state != "ACTIVE":
            raise self.wait(f"waiting for the node group {NODE_GROUP} to become ACTIVE (it is {state})")
        sizes = group.get("scalingConfig") or {}
        if any(sizes.get(key) != value for key, value in scaling.items()):
            self.aws.call(
                "eks", "update_nodegroup_config", clusterName=cluster, nodegroupName=NODE_GROUP, scalingConfig=scaling
            )
            raise self.wait(f"resizing the node group {NODE_GROUP} to {scaling}")
        return group

    def describe_node_group(self, cluster: str) -> Optional[dict[str, Any]]:
        try:
            return self.aws.call("eks", "describe_nodegroup", clusterName=cluster, nodegroupName=NODE_GROUP)[
                "nodegroup"
            ]
        except AwsNotFound:
            return None

    # The runtime -------------------------------------------------------------------------------

    def runtime(self, cluster: dict[str, Any]) -> None:
        """Record the cluster in status and fill in (making and linking it if need be) the KubernetesRuntimeInstance."""
        name = cluster["name"]
        ca_data = (cluster.get("certificateAuthority") or {}).get("data") or ""
        store.merge_status(
            Model,
            self.obj.id,
            {
                "cluster": {
                    "name": name,
                    "arn": cluster.get("arn"),
                    "endpoint": cluster.get("endpoint"),
                    "version": cluster.get("version"),
                    "certificate_authority": ca_data,
                    "oidc_issuer": ((cluster.get("identity") or {}).get("oidc") or {}).get("issuer"),
                },
                "auth": {"method": "aws-iam", "cluster_name": name, "region": self.region},
            },
        )
        runtime_id, linked = self.obj.kubernetes_runtime_instance_id, False
        if runtime_id is None:
            runtime_id = self._runtime_instance().id
            self.record(
                f"KubernetesRuntimeInstance {self.obj.name!r} made", kubernetes_runtime_instance_id=str(runtime_id)
            )
            store.update(Model, self.obj.id, {"kubernetes_runtime_instance_id": runtime_id})
            linked = True
        else:
            self.record(
                f"linked to KubernetesRuntimeInstance {runtime_id}", kubernetes_runtime_instance_id=str(runtime_id)
            )
        fields = {
            "api_endpoint": cluster.get("endpoint"),
            "ca_certificate": certificate_pem(ca_data),
            "location": self.region,
        }
        try:
            store.update(KubernetesRuntimeInstance, runtime_id, fields)
        except (InvalidObject, Conflict) as exc:
            raise PermanentError(f"cannot fill in KubernetesRuntimeInstance {runtime_id}: {exc}") from exc
        if linked:  # linking made a new generation of this object: reconcile it (it finds everything built)
            raise TemporaryError(
                f"linked KubernetesRuntimeInstance {self.obj.name!r}; reconciling the new generation", delay=0
            )

    def _runtime_instance(self) -> KubernetesRuntimeInstance:
        """The runtime named after this object: made by an earlier, interrupted attempt, or made now."""
        definition_id = self.definition.kubernetes_runtime_definition_id
        found, _ = store.list_objects(KubernetesRuntimeInstance, limit=1, filters={"name": self.obj.name})
        if found:
            runtime = found[0]
            if runtime.kubernetes_runtime_definition_id != definition_id or runtime.deletion_scheduled:
                raise PermanentError(
                    f"a KubernetesRuntimeInstance named {self.obj.name!r} exists already and is not this cluster's: "
                    "link the one to fill in with kubernetes_runtime_instance"
                )
            return runtime
        fields = {"name": self.obj.name, "kubernetes_runtime_definition_id": definition_id, "location": self.region}
        return store.create(KubernetesRuntimeInstance, fields).obj


def _ours(item: dict[str, Any], obj: AwsEksKubernetesRuntimeInstance, part: Optional[str]) -> bool:
    tags = {t["Key"]: t["Value"] for t in item.get("Tags") or []}
    return tags.get(TAG_ID) == str(obj.id) and (part is None or tags.get(TAG_PART) == part)


def _allows_itself(rule: dict[str, Any], group_id: str) -> bool:
    return rule.get("IpProtocol") == "-1" and any(
        p.get("GroupId") == group_id for p in rule.get("UserIdGroupPairs", [])
    )


# The teardown ---------------------------------------------------------------------------------


def delete_eks_runtime(obj: AwsEksKubernetesRuntimeInstance) -> None:
    """Tear down what the build made, in reverse order; requeues itself while AWS is still deleting."""
    build = _Build.of(obj)
    teardown = _Teardown(build)
    teardown.node_group()
    teardown.cluster()
    teardown.roles()
    teardown.security_groups()
    teardown.nat_gateways()
    teardown.addresses()
    teardown.route_tables()
    teardown.internet_gateways()
    teardown.subnets()
    teardown.vpcs()
    teardown.release_runtime()


class _Teardown:
    """The build's steps undone; each deletes what the inventory names and what carries this object's tags."""

    def __init__(self, build: _Build) -> None:
        self.build = build
        self.obj = build.obj
        self.inventory = build.inventory

    def ids(self, key: str, operation: str, items_key: str, id_key: str) -> list[str]:
        """The ids of one kind of EC2 resource: the one the inventory names, then those found by tag."""
        recorded = [self.inventory[key]] if self.inventory.get(key) else []
        found = [item[id_key] for item in self.build.find(operation, items_key)]
        return list(dict.fromkeys([*recorded, *found]))

    def node_group(self) -> None:
        cluster = self.build.names["cluster"]
        group = self.build.describe_node_group(cluster)
        if group is not None:
            if group.get("status") != "DELETING":
                with _tolerating():
                    self.build.aws.call("eks", "delete_nodegroup", clusterName=cluster, nodegroupName=NODE_GROUP)
            group = self.build.describe_node_group(cluster)
        if group is not None:
            raise self.build.wait(f"deleting the node group {NODE_GROUP} (it is {group.get('status')})")
        self.build.forget(f"node group {NODE_GROUP} deleted", "node_group_name")

    def cluster(self) -> None:
        name = self.build.names["cluster"]
        cluster = self.build.describe_cluster(name)
        if cluster is not None:
            if cluster.get("status") != "DELETING":
                with _tolerating():
                    self.build.aws.call("eks", "delete_cluster", name=name)
            cluster = self.build.describe_cluster(name)
        if cluster is not None:
            raise self.build.wait(f"deleting the EKS cluster {name} (it is {cluster.get('status')})")
        self.build.forget(f"EKS cluster {name} deleted", "cluster_name", "cluster_arn")

    def roles(self) -> None:
        iam = self.build.aws
        for which in ("node_role", "cluster_role"):
            name = self.build.names[which]
            with _tolerating(f"deleting the IAM role {name}"):
                for policy in iam.pages("iam", "list_attached_role_policies", "AttachedPolicies", RoleName=name):
                    with _tolerating():
                        iam.call("iam", "detach_role_policy", RoleName=name, PolicyArn=policy["PolicyArn"])
                for policy_name in iam.pages("iam", "list_role_policies", "PolicyNames", RoleName=name):
                    with _tolerating():
                        iam.call("iam", "delete_role_policy", RoleName=name, PolicyName=policy_name)
                profiles = iam.pages("iam", "list_instance_profiles_for_role", "InstanceProfiles", RoleName=name)
                for profile in profiles:
                    with _tolerating():
                        iam.call(
                            "iam",
                            "remove_role_from_instance_profile",
                            InstanceProfileName=profile["InstanceProfileName"],
                            RoleName=name,
                        )
                iam.call("iam", "delete_role", RoleName=name)
            self.build.forget(f"IAM role {name} deleted", f"{which}_name", f"{which}_arn")

    def security_groups(self) -> None:
        for group_id in self.ids("security_group_id", "describe_security_groups", "SecurityGroups", "GroupId"):
            with _tolerating(f"deleting the security group {group_id}"):
                self.build.ec2("delete_security_group", GroupId=group_id)
        self.build.forget("security group deleted", "security_group_id")

    def nat_gateways(self) -> None:
        ids = self.ids("nat_gateway_id", "describe_nat_gateways", "NatGateways", "NatGatewayId")
        waiting = []
        for gateway_id in ids:
            with _tolerating():
                self.build.ec2("delete_nat_gateway", NatGatewayId=gateway_id)
            with _tolerating():
                for gateway in self.build.ec2("describe_nat_gateways", NatGatewayIds=[gateway_id])["NatGateways"]:
                    if gateway.get("State") not in ("deleted", "failed"):
                        waiting.append(f"{gateway_id} ({gateway.get('State')})")
        if waiting:
            raise self.build.wait(f"deleting the NAT gateway {', '.join(waiting)}")
        self.build.forget("NAT gateway deleted", "nat_gateway_id")

    def addresses(self) -> None:
        ids = self.ids("elastic_ip_allocation_id", "describe_addresses", "Addresses", "AllocationId")
        for allocation_id in ids:
            with _tolerating(f"releasing the Elastic IP {allocation_id}"):
                self.build.ec2("release_address", AllocationId=allocation_id)
        self.build.forget("Elastic IP released", "elastic_ip_allocation_id")

    def route_tables(self) -> None:
        recorded = [self.inventory.get(k) for k in ("public_route_table_id", "private_route_table_id")]
        found = {t["RouteTableId"]: t for t in self.build.find("describe_route_tables", "RouteTables")}
        for table_id in dict.fromkeys([*filter(None, recorded), *found]):
            table = found.get(table_id) or self._route_table(table_id)
            if table is None:
                continue
            for association in table.get("Associations", []):
                if not association.get("Main"):
                    with _tolerating():
                        self.build.ec2("disassociate_route_table", AssociationId=association["RouteTableAssociationId"])
            with _tolerating(f"deleting the route table {table_id}"):
                self.build.ec2("delete_route_table", RouteTableId=table_id)
        self.build.forget("route tables deleted", "public_route_table_id", "private_route_table_id")

    def _route_table(self, table_id: str) -> Optional[dict[str, Any]]:
        try:
            return self.build.ec2("describe_route_tables", RouteTableIds=[table_id])["RouteTables"][0]
        except (AwsNotFound, IndexError):
            return None

    def internet_gateways(self) -> None:
        recorded = self.inventory.get("internet_gateway_id")
        found = {g["InternetGatewayId"]: g for g in self.build.find("describe_internet_gateways", "InternetGateways")}
        for gateway_id in dict.fromkeys([*filter(None, [recorded]), *found]):
            gateway = found.get(gateway_id, {})
            vpcs = [a["VpcId"] for a in gateway.get("Attachments", [])] or list(
                filter(None, [self.inventory.get("vpc_id")])
            )
            for vpc_id in vpcs:
                with _tolerating(f"detaching the internet gateway {gateway_id}"):
                    self.build.ec2("detach_internet_gateway", InternetGatewayId=gateway_id, VpcId=vpc_id)
            with _tolerating(f"deleting the internet gateway {gateway_id}"):
                self.build.ec2("delete_internet_gateway", InternetGatewayId=gateway_id)
        self.build.forget("internet gateway deleted", "internet_gateway_id")

    def subnets(self) -> None:
        recorded = [*(self.inventory.get("public_subnet_ids") or []), *(self.inventory.get("private_subnet_ids") or [])]
        found = [s["SubnetId"] for s in self.build.find("describe_subnets", "Subnets")]
        for subnet_id in dict.fromkeys([*recorded, *found]):
            with _tolerating(f"deleting the subnet {subnet_id}"):
                self.build.ec2("delete_subnet", SubnetId=subnet_id)
        self.build.forget("subnets deleted", "public_subnet_ids", "private_subnet_ids")

    def vpcs(self) -> None:
        for vpc_id in self.ids("vpc_id", "describe_vpcs", "Vpcs", "VpcId"):
            with _tolerating(f"deleting the VPC {vpc_id}"):
                self.build.ec2("delete_vpc", VpcId=vpc_id)
        self.build.forget("VPC deleted", "vpc_id", "availability_zones")

    def release_runtime(self) -> None:
        """Clear the endpoint and CA of the linked runtime (it reaches nothing now) and say so on it."""
        runtime_id = self.obj.kubernetes_runtime_instance_id
        if runtime_id is None:
            return
        try:
            store.update(KubernetesRuntimeInstance, runtime_id, {"api_endpoint": None, "ca_certificate": None})
        except (NotFound, Conflict):
            return  # gone, or being deleted: nothing to say
        message = (
            f"its EKS cluster {self.build.names['cluster']} was deleted with {Model.kind} {self.obj.name!r}; "
            "delete this runtime once nothing uses it"
        )
        record_event(KubernetesRuntimeInstance.kind, runtime_id, "ClusterDeleted", message, type=WARNING)


@contextlib.contextmanager
def _tolerating(waiting_for: Optional[str] = None) -> Iterator[None]:
    """Ignore what is gone already; with ``waiting_for``, requeue while something still uses it."""
    try:
        yield
    except AwsNotFound:
        pass
    except AwsError as exc:
        if exc.code in GONE_CODES:
            return
        if waiting_for and (isinstance(exc, AwsConflict) or exc.code in IN_USE_CODES):
            raise TemporaryError(f"{waiting_for}: {exc.code} (still in use)", delay=POLL_DELAY) from exc
        raise


register(Model.kind, Reconciler(reconcile=reconcile_eks_runtime, delete=delete_eks_runtime))

