"""The network of an EKS cluster, made and torn down: VPC, subnets, gateways, route tables, security group.

Each making step finds the resource an earlier attempt tagged as that part
of the build (:meth:`tasks.aws_eks_build.Build.ensure`) before creating it,
and records its id in the inventory right after; each tearing-down step
deletes what the inventory names and whatever else carries the object's
tags, tolerating what is gone and requeueing while something still uses it.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any, Optional

from .aws_adapter import AwsConflict, AwsNotFound
from .aws_eks_build import Build
from .errors import PermanentError

__all__ = [
    # Making
    "vpc",
    "subnets",
    "internet_gateway",
    "nat_gateway",
    "route_table",
    "security_group",
    # Tearing down
    "delete_security_groups",
    "delete_nat_gateways",
    "release_addresses",
    "delete_route_tables",
    "delete_internet_gateways",
    "delete_subnets",
    "delete_vpcs",
    # Names
    "VPC_CIDR",
    "EKS_UNSUPPORTED_ZONE_IDS",
]

#: The VPC's address range; each subnet is a /20 of it (public ones first, private ones from the middle).
VPC_CIDR = "10.0.0.0/16"
#: Availability zones (by zone id) where EKS cannot place a control plane.
EKS_UNSUPPORTED_ZONE_IDS = frozenset({"use1-az3", "usw1-az2", "cac1-az3"})


# Making -----------------------------------------------------------------------------------------


def vpc(build: Build) -> str:
    """The VPC, with DNS support and host names on."""
    vpc = build.ensure(
        "vpc",
        "describe_vpcs",
        "Vpcs",
        lambda: build.ec2("create_vpc", CidrBlock=VPC_CIDR, TagSpecifications=build.tag_specifications("vpc", "vpc"))[
            "Vpc"
        ],
    )
    vpc_id = vpc["VpcId"]
    for attribute in ("EnableDnsSupport", "EnableDnsHostnames"):  # one attribute per call
        build.ec2("modify_vpc_attribute", VpcId=vpc_id, **{attribute: {"Value": True}})
    build.record(f"VPC {vpc_id} ready", vpc_id=vpc_id)
    return vpc_id


def zones(build: Build) -> list[str]:
    """The first ``zone_count`` zones of the region EKS can use (the recorded ones once chosen)."""
    count = build.definition.zone_count
    if len(build.inventory.get("availability_zones") or []) >= count:
        return build.inventory["availability_zones"][:count]
    answer = build.ec2("describe_availability_zones", Filters=[{"Name": "state", "Values": ["available"]}])
    usable = sorted(
        zone["ZoneName"]
        for zone in answer.get("AvailabilityZones", [])
        if zone.get("ZoneType", "availability-zone") == "availability-zone"
        and zone.get("ZoneId") not in EKS_UNSUPPORTED_ZONE_IDS
    )
    if len(usable) < count:
        raise PermanentError(f"{build.region} has {len(usable)} availability zones EKS can use, not {count}")
    build.record(f"availability zones {', '.join(usable[:count])}", availability_zones=usable[:count])
    return usable[:count]


def subnets(build: Build, vpc_id: str) -> tuple[list[str], list[str]]:
    """One public and one private subnet per zone; returns their ids (public, private)."""
    blocks = list(ipaddress.ip_network(VPC_CIDR).subnets(new_prefix=20))
    tiers = {"public": [], "private": []}
    for index, zone in enumerate(zones(build)):
        for tier, block, role in (
            ("public", blocks[index], "kubernetes.io/role/elb"),
            ("private", blocks[len(blocks) // 2 + index], "kubernetes.io/role/internal-elb"),
        ):
            subnet = _subnet(build, vpc_id, f"{tier}-subnet-{zone}", zone, str(block), {role: "1"})
            if tier == "public" and not subnet.get("MapPublicIpOnLaunch"):
                build.ec2("modify_subnet_attribute", SubnetId=subnet["SubnetId"], MapPublicIpOnLaunch={"Value": True})
            tiers[tier].append(subnet["SubnetId"])
            build.record(
                f"{tier} subnet {subnet['SubnetId']} in {zone} ready",
                public_subnet_ids=list(tiers["public"]),
                private_subnet_ids=list(tiers["private"]),
            )
    return tiers["public"], tiers["private"]


def _subnet(build: Build, vpc_id: str, part: str, zone: str, block: str, role_tag: dict[str, str]) -> dict:
    cluster_tag = {f"kubernetes.io/cluster/{build.names['cluster']}": "shared"}
    return build.ensure(
        part,
        "describe_subnets",
        "Subnets",
        lambda: build.ec2(
            "create_subnet",
            VpcId=vpc_id,
            AvailabilityZone=zone,
            CidrBlock=block,
            TagSpecifications=build.tag_specifications("subnet", part, **role_tag, **cluster_tag),
        )["Subnet"],
        filters=({"Name": "vpc-id", "Values": [vpc_id]},),
    )


def internet_gateway(build: Build, vpc_id: str) -> str:
    """The internet gateway, attached to the VPC."""
    gateway = build.ensure(
        "internet-gateway",
        "describe_internet_gateways",
        "InternetGateways",
        lambda: build.ec2(
            "create_internet_gateway",
            TagSpecifications=build.tag_specifications("internet-gateway", "internet-gateway"),
        )["InternetGateway"],
    )
    gateway_id = gateway["InternetGatewayId"]
    if not any(a.get("VpcId") == vpc_id for a in gateway.get("Attachments", [])):
        build.ec2("attach_internet_gateway", InternetGatewayId=gateway_id, VpcId=vpc_id)
    build.record(f"internet gateway {gateway_id} attached", internet_gateway_id=gateway_id)
    return gateway_id


def nat_gateway(build: Build, vpc_id: str, subnet_id: str) -> str:
    """One NAT gateway, in the first public subnet, with an Elastic IP of its own; waits until available."""
    address = build.ensure(
        "nat-address",
        "describe_addresses",
        "Addresses",
        lambda: build.ec2(
            "allocate_address", Domain="vpc", TagSpecifications=build.tag_specifications("elastic-ip", "nat-address")
        ),
    )
    build.record(f"Elastic IP {address['AllocationId']} ready", elastic_ip_allocation_id=address["AllocationId"])
    gateway = build.ensure(
        "nat-gateway",
        "describe_nat_gateways",
        "NatGateways",
        lambda: build.ec2(
            "create_nat_gateway",
            SubnetId=subnet_id,
            AllocationId=address["AllocationId"],
            ClientToken=f"{build.obj.id}-nat",
            TagSpecifications=build.tag_specifications("natgateway", "nat-gateway"),
        )["NatGateway"],
        filters=(
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "state", "Values": ["pending", "available", "failed"]},
        ),
    )
    gateway_id, state = gateway["NatGatewayId"], gateway.get("State", "pending")
    build.record(f"NAT gateway {gateway_id} is {state}", nat_gateway_id=gateway_id)
    if state == "failed":
        why = f"{gateway.get('FailureCode', '')}: {gateway.get('FailureMessage', '')}"
        raise PermanentError(f"NAT gateway {gateway_id} failed ({why}); delete this runtime and create it again")
    if state != "available":
        raise build.wait(f"waiting for the NAT gateway {gateway_id} to become available (it is {state})")
    return gateway_id


def route_table(build: Build, part: str, vpc_id: str, subnet_ids: list[str], target: dict[str, str]) -> str:
    """A route table sending 0.0.0.0/0 to ``target``, associated with ``subnet_ids``."""
    table = build.ensure(
        part,
        "describe_route_tables",
        "RouteTables",
        lambda: build.ec2(
            "create_route_table", VpcId=vpc_id, TagSpecifications=build.tag_specifications("route-table", part)
        )["RouteTable"],
        filters=({"Name": "vpc-id", "Values": [vpc_id]},),
    )
    table_id = table["RouteTableId"]
    default = [r for r in table.get("Routes", []) if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
    if not default:
        build.ec2("create_route", RouteTableId=table_id, DestinationCidrBlock="0.0.0.0/0", **target)
    elif any(default[0].get(key) != value for key, value in target.items()):
        build.ec2("replace_route", RouteTableId=table_id, DestinationCidrBlock="0.0.0.0/0", **target)
    associated = {a.get("SubnetId") for a in table.get("Associations", [])}
    for subnet_id in subnet_ids:
        if subnet_id not in associated:
            build.ec2("associate_route_table", RouteTableId=table_id, SubnetId=subnet_id)
    key = part.replace("-routes", "_route_table_id")
    build.record(f"route table {table_id} ({part}) ready", **{key: table_id})
    return table_id


def security_group(build: Build, vpc_id: str) -> str:
    """The cluster's security group: its members reach each other on every port."""
    group = build.ensure(
        "cluster-security-group",
        "describe_security_groups",
        "SecurityGroups",
        lambda: build.ec2(
            "create_security_group",
            GroupName=build.names["security_group"],
            Description=f"threeport EKS cluster {build.names['cluster']}",
            VpcId=vpc_id,
            TagSpecifications=build.tag_specifications("security-group", "cluster-security-group"),
        ),
        filters=({"Name": "vpc-id", "Values": [vpc_id]},),
    )
    group_id = group["GroupId"]
    itself = {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}
    if not any(_allows_itself(rule, group_id) for rule in group.get("IpPermissions", [])):
        with contextlib.suppress(AwsConflict):  # InvalidPermission.Duplicate: there already
            build.ec2("authorize_security_group_ingress", GroupId=group_id, IpPermissions=[itself])
    build.record(f"security group {group_id} ready", security_group_id=group_id)
    return group_id


def _allows_itself(rule: dict[str, Any], group_id: str) -> bool:
    return rule.get("IpProtocol") == "-1" and any(
        p.get("GroupId") == group_id for p in rule.get("UserIdGroupPairs", [])
    )


# Tearing down -----------------------------------------------------------------------------------


def _ids(build: Build, key: str, operation: str, items_key: str, id_key: str) -> list[str]:
    """The ids of one kind of EC2 resource: the one the inventory names, then those found by tag."""
    recorded = [build.inventory[key]] if build.inventory.get(key) else []
    found = [item[id_key] for item in build.find(operation, items_key)]
    return list(dict.fromkeys([*recorded, *found]))


def delete_security_groups(build: Build) -> None:
    for group_id in _ids(build, "security_group_id", "describe_security_groups", "SecurityGroups", "GroupId"):
        with build.tolerating(f"deleting the security group {group_id}"):
            build.ec2("delete_security_group", GroupId=group_id)
    build.forget("security group deleted", "security_group_id")


def delete_nat_gateways(build: Build) -> None:
    ids = _ids(build, "nat_gateway_id", "describe_nat_gateways", "NatGateways", "NatGatewayId")
    waiting = []
    for gateway_id in ids:
        with build.tolerating():
            build.ec2("delete_nat_gateway", NatGatewayId=gateway_id)
        with build.tolerating():
            for gateway in build.ec2("describe_nat_gateways", NatGatewayIds=[gateway_id])["NatGateways"]:
                if gateway.get("State") not in ("deleted", "failed"):
                    waiting.append(f"{gateway_id} ({gateway.get('State')})")
    if waiting:
        raise build.wait(f"deleting the NAT gateway {', '.join(waiting)}")
    build.forget("NAT gateway deleted", "nat_gateway_id")


def release_addresses(build: Build) -> None:
    ids = _ids(build, "elastic_ip_allocation_id", "describe_addresses", "Addresses", "AllocationId")
    for allocation_id in ids:
        with build.tolerating(f"releasing the Elastic IP {allocation_id}"):
            build.ec2("release_address", AllocationId=allocation_id)
    build.forget("Elastic IP released", "elastic_ip_allocation_id")


def delete_route_tables(build: Build) -> None:
    recorded = [build.inventory.get(k) for k in ("public_route_table_id", "private_route_table_id")]
    found = {t["RouteTableId"]: t for t in build.find("describe_route_tables", "RouteTables")}
    for table_id in dict.fromkeys([*filter(None, recorded), *found]):
        table = found.get(table_id) or _route_table(build, table_id)
        if table is None:
            continue
        for association in table.get("Associations", []):
            if not association.get("Main"):
                with build.tolerating():
                    build.ec2("disassociate_route_table", AssociationId=association["RouteTableAssociationId"])
        with build.tolerating(f"deleting the route table {table_id}"):
            build.ec2("delete_route_table", RouteTableId=table_id)
    build.forget("route tables deleted", "public_route_table_id", "private_route_table_id")


def _route_table(build: Build, table_id: str) -> Optional[dict[str, Any]]:
    try:
        return build.ec2("describe_route_tables", RouteTableIds=[table_id])["RouteTables"][0]
    except (AwsNotFound, IndexError):
        return None


def delete_internet_gateways(build: Build) -> None:
    recorded = build.inventory.get("internet_gateway_id")
    found = {g["InternetGatewayId"]: g for g in build.find("describe_internet_gateways", "InternetGateways")}
    for gateway_id in dict.fromkeys([*filter(None, [recorded]), *found]):
        gateway = found.get(gateway_id, {})
        vpcs = [a["VpcId"] for a in gateway.get("Attachments", [])] or list(
            filter(None, [build.inventory.get("vpc_id")])
        )
        for vpc_id in vpcs:
            with build.tolerating(f"detaching the internet gateway {gateway_id}"):
                build.ec2("detach_internet_gateway", InternetGatewayId=gateway_id, VpcId=vpc_id)
        with build.tolerating(f"deleting the internet gateway {gateway_id}"):
            build.ec2("delete_internet_gateway", InternetGatewayId=gateway_id)
    build.forget("internet gateway deleted", "internet_gateway_id")


def delete_subnets(build: Build) -> None:
    recorded = [*(build.inventory.get("public_subnet_ids") or []), *(build.inventory.get("private_subnet_ids") or [])]
    found = [s["SubnetId"] for s in build.find("describe_subnets", "Subnets")]
    for subnet_id in dict.fromkeys([*recorded, *found]):
        with build.tolerating(f"deleting the subnet {subnet_id}"):
            build.ec2("delete_subnet", SubnetId=subnet_id)
    build.forget("subnets deleted", "public_subnet_ids", "private_subnet_ids")


def delete_vpcs(build: Build) -> None:
    for vpc_id in _ids(build, "vpc_id", "describe_vpcs", "Vpcs", "VpcId"):
        with build.tolerating(f"deleting the VPC {vpc_id}"):
            build.ec2("delete_vpc", VpcId=vpc_id)
    build.forget("VPC deleted", "vpc_id", "availability_zones")
