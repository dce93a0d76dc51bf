"""The AwsRelationalDatabaseInstance reconciler: an RDS database in the network its workload runs in.

A reconcile goes through four steps, each one looking up what it would make
(by a deterministic name, or by the threeport tags) before making it, and
recording what it has in the status ``inventory`` as it goes, so a run that
crashed half-way is continued by the next one instead of duplicated:

1. the network: the VPC of the workload's EKS runtime when it has one in the
   database's account, the region's default VPC otherwise; a DB subnet group
   over its subnets and a security group letting the VPC reach the port;
2. the master password: generated once and stored encrypted on the object
   before any instance can use it;
3. the DB instance, which takes minutes: each run checks it and requeues
   (``TemporaryError``) until it is available, then records the connection;
4. the connection details (never the password) in the status; when they
   change, the workload instance is asked to reconcile again, and it makes
   the Kubernetes Secret named by the definition from them and the password.

Deletion goes in reverse: the instance (polled until it is gone), the subnet
group, the security group, tolerating what is gone already.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from models import store
from models.aws import (
    AwsAccount,
    AwsEksKubernetesRuntimeDefinition,
    AwsEksKubernetesRuntimeInstance,
    AwsRelationalDatabaseDefinition,
    AwsRelationalDatabaseInstance,
)
from models.kubernetes import KubernetesRuntimeInstance
from models.workloads import WorkloadInstance

from .aws_adapter import Aws, AwsConflict, AwsNotFound, AwsPermanentError, tag_filters, tags_for
from .errors import PermanentError, TemporaryError
from .reconcilers import Reconciler, register

__all__ = [
    "reconcile_database",
    "delete_database",
    "identifier_for",
    "new_password",
    "MASTER_USERNAME",
    "POLL_DELAY",
]

#: Seconds between two looks at an instance being created or deleted.
POLL_DELAY = 30.0
#: The master user of every database (the password is generated per instance).
MASTER_USERNAME = "threeport"

#: Instance states in which the database accepts connections.
_READY_STATES = frozenset({"available", "backing-up", "storage-optimization"})
#: Instance states that waiting cannot fix.
_FAILED_STATES = frozenset(
    {
        "failed",
        "incompatible-network",
        "incompatible-option-group",
        "incompatible-parameters",
        "incompatible-restore",
        "inaccessible-encryption-credentials",
        "restore-error",
    }
)
#: RDS identifiers: at most 63 characters.
_MAX_IDENTIFIER = 63


# Names ------------------------------------------------------------------------------


def identifier_for(obj: AwsRelationalDatabaseInstance) -> str:
    """The RDS identifier of ``obj``'s database (and its subnet and security groups): ``threeport-<name>-<id>``.

    Letters, digits and single hyphens, starting with a letter, at most 63
    characters: RDS's rules, whatever the object's name.
    """
    short = uuid.UUID(str(obj.id)).hex[:8]
    name = re.sub(r"[^a-z0-9]+", "-", obj.name.lower()).strip("-")
    name = name[: _MAX_IDENTIFIER - len("threeport--") - len(short)].rstrip("-")
    return "-".join(part for part in ("threeport", name, short) if part)


def new_password() -> str:
    """A master password RDS accepts for every engine: 32 URL-safe characters (no '/', '@', '"' or space)."""
    return secrets.token_urlsafe(24)


def _tag_list(obj: AwsRelationalDatabaseInstance, **extra: str) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags_for(obj, **extra).items()]


# The build and its inventory --------------------------------------------------------


@dataclass(frozen=True)
class _Network:
    """Where the database goes: a VPC, its CIDR blocks and the subnets of the subnet group."""

    vpc_id: str
    cidrs: list[str]
    subnet_ids: list[str]
    source: str


class _Build:
    """One run over one object: its definition, the AWS account and region, and the inventory so far."""

    def __init__(self, obj: AwsRelationalDatabaseInstance) -> None:
        self.obj = obj
        self.definition = store.get(AwsRelationalDatabaseDefinition, obj.aws_relational_database_definition_id)
        self.account = store.get(AwsAccount, self.definition.aws_account_id)
        self.inventory: dict[str, Any] = dict((obj.status or {}).get("inventory") or {})
        self.identifier = identifier_for(obj)
        self._aws: Optional[Aws] = None

    @property
    def region(self) -> str:
        return self.inventory.get("region") or self.account.default_region

    @property
    def aws(self) -> Aws:
        if self._aws is None or self._aws.region != self.region:
            self._aws = Aws.for_account(self.account, self.region)
        return self._aws

    def record(self, **changes: Any) -> None:
        """Merge ``changes`` into the inventory, on the object at once (None removes a key)."""
        before = dict(self.inventory)
        for key, value in changes.items():
            if value is None:
                self.inventory.pop(key, None)
            else:
                self.inventory[key] = value
        if self.inventory != before:
            self.status(inventory=self.inventory)

    def status(self, **keys: Any) -> None:
        store.merge_status(AwsRelationalDatabaseInstance, self.obj.id, keys)


# Reconcile --------------------------------------------------------------------------


def reconcile_database(obj: AwsRelationalDatabaseInstance) -> None:
    """Build ``obj``'s database step by step; TemporaryError while the instance is not available yet."""
    build = _Build(obj)
    network = _network(build)
    subnet_group = _subnet_group(build, network)
    group_id = _security_group(build, network)
    password = _master_password(obj)
    instance = _db_instance(build, password=password, subnet_group=subnet_group, group_id=group_id)
    endpoint = instance["Endpoint"]
    connection = {
        "host": endpoint["Address"],
        "port": endpoint["Port"],
        "database": build.definition.database_name,
        "username": MASTER_USERNAME,
        "engine": build.definition.engine,
    }
    build.status(connection=connection, secret={"name": build.definition.workload_secret_name})
    if (obj.status or {}).get("connection") != connection:  # the workload makes its Secret from it
        store.request_reconcile(WorkloadInstance, [obj.workload_instance_id])


def _network(build: _Build) -> _Network:
    """The VPC chosen on an earlier run, or the runtime's, or the default VPC; recorded before anything is made."""
    if build.inventory.get("vpc_id") and build.inventory.get("subnet_ids"):
        inventory = build.inventory  # never move a database that may exist already
        return _Network(inventory["vpc_id"], inventory["vpc_cidrs"], inventory["subnet_ids"], inventory["network"])
    runtime = _eks_network_of(build)
    if runtime is not None:
        region, vpc_id, subnet_ids, source = runtime
        build.record(region=region)
    else:
        build.record(region=build.region)
        vpc_id, source = _default_vpc(build.aws), "the default VPC"
        subnets = build.aws.pages("ec2", "describe_subnets", "Subnets", Filters=[_filter("vpc-id", vpc_id)])
        subnet_ids = sorted(subnet["SubnetId"] for subnet in subnets)
    if not subnet_ids:
        raise PermanentError(f"VPC {vpc_id} ({source}) has no subnets to put the database in")
    network = _Network(vpc_id, _cidrs_of(build.aws, vpc_id), subnet_ids, source)
    build.record(vpc_id=vpc_id, vpc_cidrs=network.cidrs, subnet_ids=subnet_ids, network=source)
    return network


def _eks_network_of(build: _Build) -> Optional[tuple[str, str, list[str], str]]:
    """(region, VPC, subnets, description) of the workload's EKS runtime in the database's account, if any.

    TemporaryError while that runtime has not recorded its VPC yet: a
    database put in another VPC could not be reached from its pods.
    """
    workload = store.get(WorkloadInstance, build.obj.workload_instance_id)
    runtime_id = workload.kubernetes_runtime_instance_id or _default_runtime_id()
    if runtime_id is None:
        return None
    found, _ = store.list_objects(
        AwsEksKubernetesRuntimeInstance, filters={"kubernetes_runtime_instance_id": runtime_id}, limit=1
    )
    if not found:
        return None  # an existing cluster, not one the control plane built
    eks = found[0]
    eks_definition = store.get(AwsEksKubernetesRuntimeDefinition, eks.aws_eks_kubernetes_runtime_definition_id)
    if eks_definition.aws_account_id != build.account.id:
        return None  # another account: its VPC is not this account's to use
    inventory = (eks.status or {}).get("inventory") or {}
    if not inventory.get("vpc_id") or not inventory.get("subnet_ids"):
        raise TemporaryError(f"waiting for EKS runtime {eks.name!r} to record its VPC", delay=POLL_DELAY)
    region = eks.region or build.account.default_region
    return region, inventory["vpc_id"], list(inventory["subnet_ids"]), f"the VPC of EKS runtime {eks.name!r}"


def _default_runtime_id() -> Optional[uuid.UUID]:
    found, _ = store.list_objects(KubernetesRuntimeInstance, filters={"default_runtime": True}, limit=1)
    return found[0].id if found else None


def _default_vpc(aws: Aws) -> str:
    """The region's default VPC, made when the region has none."""
    vpcs = aws.pages("ec2", "describe_vpcs", "Vpcs", Filters=[_filter("is-default", "true")])
    if vpcs:
        return vpcs[0]["VpcId"]
    try:
        return aws.call("ec2", "create_default_vpc")["Vpc"]["VpcId"]
    except AwsConflict:  # made meanwhile
        return aws.pages("ec2", "describe_vpcs", "Vpcs", Filters=[_filter("is-default", "true")])[0]["VpcId"]


def _cidrs_of(aws: Aws, vpc_id: str) -> list[str]:
    """Every IPv4 block of the VPC: pods get addresses from any of them."""
    vpc = aws.call("ec2", "describe_vpcs", VpcIds=[vpc_id])["Vpcs"][0]
    blocks = [
        block["CidrBlock"]
        for block in vpc.get("CidrBlockAssociationSet", [])
        if block.get("CidrBlockState", {}).get("State", "associated") == "associated"
    ]
    return sorted(set(blocks or [vpc["CidrBlock"]]))


def _subnet_group(build: _Build, network: _Network) -> str:
    name = build.identifier
    try:
        build.aws.call("rds", "describe_db_subnet_groups", DBSubnetGroupName=name)
    except AwsNotFound:
        try:
            build.aws.call(
                "rds",
                "create_db_subnet_group",
                DBSubnetGroupName=name,
                DBSubnetGroupDescription=_description(build),
                SubnetIds=network.subnet_ids,
                Tags=_tag_list(build.obj),
            )
        except AwsConflict:
            pass  # made meanwhile by another run
    build.record(db_subnet_group=name)
    return name


def _security_group(build: _Build, network: _Network) -> str:
    """The database's security group in the VPC (found by tag, else made), letting the VPC reach the port."""
    aws, name = build.aws, build.identifier
    group_id = _find_security_group(aws, tag_filters(build.obj), network.vpc_id)
    if group_id is None:
        try:
            group_id = aws.call(
                "ec2",
                "create_security_group",
                GroupName=name,
                Description=f"{_description(build)}: the database port from its VPC",
                VpcId=network.vpc_id,
                TagSpecifications=[{"ResourceType": "security-group", "Tags": _tag_list(build.obj, Name=name)}],
            )["GroupId"]
        except AwsConflict:  # a group of that name exists: one an interrupted run made
            group_id = _find_security_group(aws, [_filter("group-name", name)], network.vpc_id)
            if group_id is None:
                raise
    build.record(security_group_id=group_id)
    port = build.definition.database_port
    for cidr in network.cidrs:
        permission = {
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            "IpRanges": [{"CidrIp": cidr, "Description": "threeport: the database from its VPC"}],
        }
        try:
            aws.call("ec2", "authorize_security_group_ingress", GroupId=group_id, IpPermissions=[permission])
        except AwsConflict:
            pass  # InvalidPermission.Duplicate: the rule is there
    return group_id


def _find_security_group(aws: Aws, filters: list[dict[str, Any]], vpc_id: str) -> Optional[str]:
    filters = [*filters, _filter("vpc-id", vpc_id)]
    groups = aws.pages("ec2", "describe_security_groups", "SecurityGroups", Filters=filters)
    return min(group["GroupId"] for group in groups) if groups else None


def _master_password(obj: AwsRelationalDatabaseInstance) -> str:
    """The stored password, or a new one stored before any instance is made with it."""
    if obj.master_password:
        return obj.master_password
    password = new_password()
    store.write_fields(AwsRelationalDatabaseInstance, obj.id, {"master_password": password})
    return password


def _db_instance(build: _Build, *, password: str, subnet_group: str, group_id: str) -> dict[str, Any]:
    """The DB instance once it is ready; TemporaryError while it is being made, PermanentError if it failed."""
    identifier = build.identifier
    build.record(db_instance_id=identifier)  # before the create: a crash right after it leaves it findable
    try:
        instance = _describe_instance(build.aws, identifier)
    except AwsNotFound:
        instance = _create_instance(build, password=password, subnet_group=subnet_group, group_id=group_id)
    state = instance.get("DBInstanceStatus", "unknown")
    build.record(db_instance_status=state, db_instance_arn=instance.get("DBInstanceArn"))
    if state in _FAILED_STATES:
        raise PermanentError(f"RDS instance {identifier} is {state}")
    if state not in _READY_STATES or not instance.get("Endpoint"):
        raise TemporaryError(f"creating RDS instance {identifier}: status {state}", delay=POLL_DELAY)
    return instance


def _create_instance(build: _Build, *, password: str, subnet_group: str, group_id: str) -> dict[str, Any]:
    definition = build.definition
    try:
        return build.aws.call(
            "rds",
            "create_db_instance",
            DBInstanceIdentifier=build.identifier,
            Engine=definition.engine,
            EngineVersion=definition.engine_version,
            DBInstanceClass=definition.machine_size,
            AllocatedStorage=definition.storage_gib,
            DBName=definition.database_name,
            Port=definition.database_port,
            MasterUsername=MASTER_USERNAME,
            MasterUserPassword=password,
            BackupRetentionPeriod=definition.backup_days,
            PubliclyAccessible=False,
            DBSubnetGroupName=subnet_group,
            VpcSecurityGroupIds=[group_id],
            CopyTagsToSnapshot=True,
            Tags=_tag_list(build.obj),
        )["DBInstance"]
    except AwsConflict:  # DBInstanceAlreadyExists: made meanwhile
        return _describe_instance(build.aws, build.identifier)


def _describe_instance(aws: Aws, identifier: str) -> dict[str, Any]:
    """The instance called ``identifier``; AwsNotFound when there is none."""
    return aws.call("rds", "describe_db_instances", DBInstanceIdentifier=identifier)["DBInstances"][0]


# Delete -----------------------------------------------------------------------------


def delete_database(obj: AwsRelationalDatabaseInstance) -> None:
    """Tear down in reverse: the instance (TemporaryError until it is gone), the subnet group, the security group."""
    if (obj.status or {}).get("connection"):  # first the workload lets go: its Secret goes
        store.merge_status(AwsRelationalDatabaseInstance, obj.id, {"connection": None})
        store.request_reconcile(WorkloadInstance, [obj.workload_instance_id])
    build = _Build(obj)
    if not build.inventory:
        return  # no step ever started: nothing was made
    _delete_instance(build)
    _delete_subnet_group(build)
    _delete_security_groups(build)


def _delete_instance(build: _Build) -> None:
    identifier = build.inventory.get("db_instance_id") or build.identifier
    try:
        state = _describe_instance(build.aws, identifier).get("DBInstanceStatus")
        if state != "deleting":
            build.aws.call(
                "rds",
                "delete_db_instance",
                DBInstanceIdentifier=identifier,
                SkipFinalSnapshot=True,
                DeleteAutomatedBackups=True,
            )
        state = _describe_instance(build.aws, identifier).get("DBInstanceStatus")
    except AwsNotFound:
        build.record(db_instance_id=None, db_instance_status=None, db_instance_arn=None)
        return
    except AwsConflict as exc:  # InvalidDBInstanceState: it cannot be deleted in its state (creating, ...) yet
        raise TemporaryError(f"deleting RDS instance {identifier}: {exc.message}", delay=POLL_DELAY) from exc
    build.record(db_instance_status=state)
    raise TemporaryError(f"deleting RDS instance {identifier}: status {state}", delay=POLL_DELAY)


def _delete_subnet_group(build: _Build) -> None:
    name = build.inventory.get("db_subnet_group") or build.identifier
    try:
        build.aws.call("rds", "delete_db_subnet_group", DBSubnetGroupName=name)
    except AwsNotFound:
        pass
    except AwsPermanentError as exc:
        if not exc.code.startswith("InvalidDBSubnetGroupState"):
            raise
        # an instance still uses it (one going away)
        raise TemporaryError(f"deleting DB subnet group {name}: {exc.message}", delay=POLL_DELAY) from exc
    build.record(db_subnet_group=None)


def _delete_security_groups(build: _Build) -> None:
    """The recorded group and any other tagged for the object (an interrupted run's)."""
    aws = build.aws
    found = aws.pages("ec2", "describe_security_groups", "SecurityGroups", Filters=tag_filters(build.obj))
    group_ids = {group["GroupId"] for group in found}
    if build.inventory.get("security_group_id"):
        group_ids.add(build.inventory["security_group_id"])
    for group_id in sorted(group_ids):
        try:
            aws.call("ec2", "delete_security_group", GroupId=group_id)
        except AwsNotFound:
            pass
        except AwsConflict as exc:  # DependencyViolation: the instance's network interfaces linger a while
            raise TemporaryError(f"deleting security group {group_id}: {exc.message}", delay=POLL_DELAY) from exc
    build.record(security_group_id=None)


def _description(build: _Build) -> str:
    """What made a resource, in the few characters EC2 descriptions allow (not the object's free-form name)."""
    return f"threeport {build.obj.kind} {build.identifier}"


def _filter(name: str, value: str) -> dict[str, Any]:
    return {"Name": name, "Values": [value]}


register(
    AwsRelationalDatabaseInstance.kind,
    Reconciler(reconcile=reconcile_database, delete=delete_database),
)
