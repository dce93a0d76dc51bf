"""The AwsRelationalDatabaseInstance reconciler end to end: real PostgreSQL, NATS, a Dramatiq worker and moto.

Objects the database instance depends on (its definition, the workload
instance) are marked reconciled directly, so only the database's own
reconcile runs; everything it builds is checked through boto3 on the moto
server, counted by its ``threeport:object-id`` tag. AWS errors and requests
held while a worker process is killed come from the fault-injecting proxy
in front of moto (``tests/aws_faults.py``).
"""

from __future__ import annotations

import json
import re
import uuid

import boto3
import pytest
from dramatiq.message import Message

from api.resources import as_json
from models import store
from models.aws import (
    AwsAccount,
    AwsEksKubernetesRuntimeDefinition,
    AwsEksKubernetesRuntimeInstance,
    AwsRelationalDatabaseDefinition,
    AwsRelationalDatabaseInstance,
)
from models.kubernetes import KubernetesRuntimeDefinition, KubernetesRuntimeInstance
from models.workloads import WorkloadDefinition, WorkloadInstance
from tasks import aws_rds
from tasks.aws_adapter import TAG_ID, TAG_KIND, Aws
from workers.outbox_relay import publish_rows

from .aws import ACCESS_KEYS, ACCOUNT_ID
from .reconciling import wait_for

#: The real ``threeport worker`` with a short lock TTL and ack wait (see the helper).
REGION = "us-east-1"
YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n"
DEFINITION = {
    "engine": "postgres",
    "engine_version": "16.4",
    "database_name": "app",
    "database_port": 5433,
    "machine_size": "db.t3.small",
    "storage_gib": 30,
    "backup_days": 3,
    "workload_secret_name": "app-db",
}


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    """Polls of a busy instance come back at once."""
    monkeypatch.setattr(aws_rds, "POLL_DELAY", 0.2)


@pytest.fixture
def clients(aws_endpoint):
    """boto3 clients on the moto server, to look at what the reconciler built."""
    options = {
        "endpoint_url": aws_endpoint,
        "region_name": REGION,
        "aws_access_key_id": ACCESS_KEYS["access_key_id"],
        "aws_secret_access_key": ACCESS_KEYS["secret_access_key"],
    }
    return boto3.client("rds", **options), boto3.client("ec2", **options)


@pytest.fixture
def account(database, aws_endpoint) -> AwsAccount:
    return make_account(aws_endpoint)


@pytest.fixture
def definition(account) -> AwsRelationalDatabaseDefinition:
    return make_definition(account)


@pytest.fixture
def workload(database) -> WorkloadInstance:
    return make_workload()


def reconciled(obj):
    """Mark ``obj`` reconciled, as its own reconciler would have."""
    status = {"phase": "Reconciled", "message": ""}
    assert store.write_status(type(obj), obj.id, generation=obj.generation, status=status, reconciled=True)
    return obj


def make_account(endpoint: str) -> AwsAccount:
    fields = {"name": "moto", "account_id": ACCOUNT_ID, "default_region": REGION, "endpoint_url": endpoint}
    return reconciled(store.create(AwsAccount, {**fields, **ACCESS_KEYS}).obj)


def make_definition(account: AwsAccount) -> AwsRelationalDatabaseDefinition:
    fields = {"name": "app-db", "aws_account_id": account.id, **DEFINITION}
    return reconciled(store.create(AwsRelationalDatabaseDefinition, fields).obj)


def make_workload(runtime_id=None) -> WorkloadInstance:
    workload_definition = reconciled(store.create(WorkloadDefinition, {"name": "app", "yaml_document": YAML}).obj)
    fields = {"name": "app", "workload_definition_id": workload_definition.id}
    if runtime_id is not None:
        fields["kubernetes_runtime_instance_id"] = runtime_id
    return reconciled(store.create(WorkloadInstance, fields).obj)


def create_database(broker, definition, workload, name="orders") -> AwsRelationalDatabaseInstance:
    fields = {"name": name, "aws_relational_database_definition_id": definition.id, "workload_instance_id": workload.id}
    written = store.create(AwsRelationalDatabaseInstance, fields)
    publish_rows(broker, written.outbox)
    return written.obj


def settled(obj_id) -> AwsRelationalDatabaseInstance | None:
    """The object once its generation is observed (reconciled or failed)."""
    current = store.get(AwsRelationalDatabaseInstance, obj_id)
    return current if current.observed_generation >= current.generation else None


def gone(obj_id) -> bool:
    return AwsRelationalDatabaseInstance.get_or_none(AwsRelationalDatabaseInstance.id == obj_id) is None


def tagged(resource: dict, obj) -> bool:
    tags = {tag["Key"]: tag["Value"] for tag in resource.get("TagList") or resource.get("Tags") or []}
    return tags.get(TAG_ID) == str(obj.id) and tags.get(TAG_KIND) == "AwsRelationalDatabaseInstance"


def instances_of(rds, obj) -> list[dict]:
    return [i for i in rds.describe_db_instances()["DBInstances"] if tagged(i, obj)]


def subnet_groups_of(rds, obj) -> list[dict]:
    groups = rds.describe_db_subnet_groups()["DBSubnetGroups"]
    return [g for g in groups if tagged(rds.list_tags_for_resource(ResourceName=g["DBSubnetGroupArn"]), obj)]


def security_groups_of(ec2, obj) -> list[dict]:
    filters = [{"Name": f"tag:{TAG_ID}", "Values": [str(obj.id)]}]
    return ec2.describe_security_groups(Filters=filters)["SecurityGroups"]


def built(rds, ec2, obj) -> tuple[int, int, int]:
    """How many instances, subnet groups and security groups carry ``obj``'s tags."""
    return len(instances_of(rds, obj)), len(subnet_groups_of(rds, obj)), len(security_groups_of(ec2, obj))


def stored_password(db, obj_id) -> str:
    sql = "SELECT master_password FROM aws_relational_database_instances WHERE id = %s"
    return db.execute_sql(sql, (str(obj_id),)).fetchone()[0]


# Create -----------------------------------------------------------------------------


def test_a_database_is_built_in_the_default_vpc_and_reconciled(broker, reconciling, clients, definition, workload):
    rds, ec2 = clients

    # Given a database instance created for a workload on no EKS runtime
    obj = create_database(broker, definition, workload)

    # Then it ends reconciled
    done = wait_for(lambda: settled(obj.id))
    assert (done.status["phase"], done.reconciled, done.creation_failed) == ("Reconciled", True, False)

    # And the RDS instance follows the definition, private, tagged, in its subnet and security groups
    (instance,) = instances_of(rds, obj)
    identifier = aws_rds.identifier_for(done)
    assert instance["DBInstanceIdentifier"] == identifier and identifier.startswith("threeport-orders-")
    assert (instance["Engine"], instance["EngineVersion"], instance["DBInstanceClass"]) == (
        "postgres",
        "16.4",
        "db.t3.small",
    )
    assert (instance["AllocatedStorage"], instance["DBName"], instance["Endpoint"]["Port"]) == (30, "app", 5433)
    assert instance["BackupRetentionPeriod"] == 3 and instance["PubliclyAccessible"] is False
    assert instance["MasterUsername"] == aws_rds.MASTER_USERNAME
    assert instance["DBSubnetGroup"]["DBSubnetGroupName"] == identifier

    # And the subnet group spans the default VPC's subnets
    default_vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    (subnet_group,) = subnet_groups_of(rds, obj)
    vpc_subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [default_vpc["VpcId"]]}])["Subnets"]
    assert subnet_group["VpcId"] == default_vpc["VpcId"]
    assert {s["SubnetIdentifier"] for s in subnet_group["Subnets"]} == {s["SubnetId"] for s in vpc_subnets}

    # And the security group, the instance's only one, lets the VPC reach the database port
    (group,) = security_groups_of(ec2, obj)
    assert [g["VpcSecurityGroupId"] for g in instance["VpcSecurityGroups"]] == [group["GroupId"]]
    assert group["VpcId"] == default_vpc["VpcId"] and group["GroupName"] == identifier
    (rule,) = group["IpPermissions"]
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 5433, 5433)
    assert [r["CidrIp"] for r in rule["IpRanges"]] == [default_vpc["CidrBlock"]]

    # And the status holds the inventory, the connection (no password) and the Secret's name
    inventory = done.status["inventory"]
    assert inventory["db_instance_id"] == identifier and inventory["db_instance_status"] == "available"
    assert (inventory["vpc_id"], inventory["security_group_id"]) == (default_vpc["VpcId"], group["GroupId"])
    assert inventory["region"] == REGION and inventory["db_subnet_group"] == identifier
    assert done.status["connection"] == {
        "host": instance["Endpoint"]["Address"],
        "port": 5433,
        "database": "app",
        "username": aws_rds.MASTER_USERNAME,
        "engine": "postgres",
    }
    assert done.status["secret"] == {"name": "app-db"}


def test_the_password_is_generated_once_stored_encrypted_and_never_shown(
    broker, reconciling, database, definition, workload
):
    # Given a reconciled database instance
    obj = create_database(broker, definition, workload)
    done = wait_for(lambda: settled(obj.id))
    password = done.master_password

    # Then its password is one RDS accepts, and the column holds a ciphertext, not the password
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", password)
    stored = stored_password(database, obj.id)
    assert stored and password not in stored

    # And neither the API's view nor the status shows it
    assert "master_password" not in as_json(done)
    assert password not in json.dumps(as_json(done))

    # When it is reconciled again from scratch (its generation and inventory forgotten)
    forget(done)
    broker.enqueue(message_for_object(done))
    again = wait_for(lambda: settled(obj.id))

    # Then the same password is kept
    assert again.master_password == password and stored_password(database, obj.id) == stored


def forget(obj) -> None:
    """Forget that ``obj`` was reconciled, and what it built: as a worker killed before recording anything."""
    model = type(obj)
    model.update(observed_generation=0, reconciled=False, status={}).where(model.id == obj.id).execute()


def message_for_object(obj) -> Message:
    """A reconcile message for ``obj``'s current generation (a fresh one, not deduplicated)."""
    kwargs = {"kind": obj.kind, "object_id": str(obj.id), "generation": obj.generation}
    return Message(queue_name=obj.queue, actor_name=obj.actor, args=(), kwargs=kwargs, options={})


def test_reconciling_again_creates_no_duplicates(broker, reconciling, clients, definition, workload):
    rds, ec2 = clients

    # Given a reconciled database instance
    obj = create_database(broker, definition, workload)
    done = wait_for(lambda: settled(obj.id))
    assert built(rds, ec2, obj) == (1, 1, 1)

    # When its reconcile message is delivered again for the same generation
    broker.enqueue(message_for_object(done))
    broker.join("aws", timeout=10_000)

    # Then nothing is done: the object is not even written
    assert store.get(AwsRelationalDatabaseInstance, obj.id).resource_version == done.resource_version
    assert built(rds, ec2, obj) == (1, 1, 1)

    # When it is reconciled again after a crash that lost its status and inventory
    forget(done)
    broker.enqueue(message_for_object(done))
    again = wait_for(lambda: settled(obj.id))

    # Then it finds what it built before: reconciled, with nothing made twice
    assert again.status["phase"] == "Reconciled"
    assert built(rds, ec2, obj) == (1, 1, 1)
    assert again.status["inventory"]["security_group_id"] == security_groups_of(ec2, obj)[0]["GroupId"]
    (group,) = security_groups_of(ec2, obj)
    assert len(group["IpPermissions"]) == 1 and len(group["IpPermissions"][0]["IpRanges"]) == 1


def test_an_instance_still_being_created_is_polled_until_available(
    broker, reconciling, clients, definition, workload, monkeypatch
):
    rds, ec2 = clients
    # Given RDS reports the instance as "creating" twice before it is available
    states = fake_states(monkeypatch, ["creating", "creating"])

    # When a database instance is created
    obj = create_database(broker, definition, workload)

    # Then its status shows the progress while it waits, without failing
    wait_for(lambda: "status creating" in current_message(obj.id))
    assert not store.get(AwsRelationalDatabaseInstance, obj.id).creation_failed

    # And it ends reconciled once the instance is available, with one instance made
    done = wait_for(lambda: settled(obj.id))
    assert done.status["phase"] == "Reconciled" and done.status["connection"]["port"] == 5433
    assert states == [] and built(rds, ec2, obj) == (1, 1, 1)


def fake_states(monkeypatch, states: list[str]) -> list[str]:
    """Make the next answers about a DB instance (creates, describes) report ``states`` (no endpoint yet), one each."""
    real = Aws.call

    def call(self, service, operation, **params):
        answer = real(self, service, operation, **params)
        if service == "rds" and operation in ("create_db_instance", "describe_db_instances") and states:
            instance = answer.get("DBInstance") or answer["DBInstances"][0]
            instance = {**instance, "DBInstanceStatus": states.pop(0)}
            instance.pop("Endpoint", None)
            answer = {"DBInstance": instance} if "DBInstance" in answer else {"DBInstances": [instance]}
        return answer

    monkeypatch.setattr(Aws, "call", call)
    return states


# Delete -----------------------------------------------------------------------------


def test_deleting_removes_the_instance_its_groups_and_the_row(
    broker, reconciling, clients, definition, workload, monkeypatch
):
    rds, ec2 = clients

    # Given a reconciled database instance
    obj = create_database(broker, definition, workload)
    wait_for(lambda: settled(obj.id))
    assert built(rds, ec2, obj) == (1, 1, 1)

    # And RDS takes a while to delete it (it reports "deleting" twice)
    states = fake_states(monkeypatch, ["deleting", "deleting"])

    # When its deletion is scheduled
    publish_rows(broker, store.schedule_deletion(AwsRelationalDatabaseInstance, obj.id).outbox)

    # Then the status shows the teardown while RDS deletes the instance
    wait_for(lambda: "deleting RDS instance" in current_message(obj.id))

    # And the row goes, and the instance, the subnet group and the security group are gone
    wait_for(lambda: gone(obj.id))
    assert states == [] and built(rds, ec2, obj) == (0, 0, 0)
    identifier = aws_rds.identifier_for(obj)
    with pytest.raises(rds.exceptions.DBInstanceNotFoundFault):
        rds.describe_db_instances(DBInstanceIdentifier=identifier)
    with pytest.raises(rds.exceptions.DBSubnetGroupNotFoundFault):
        rds.describe_db_subnet_groups(DBSubnetGroupName=identifier)


def current_message(obj_id) -> str:
    row = AwsRelationalDatabaseInstance.get_or_none(AwsRelationalDatabaseInstance.id == obj_id)
    return (row.status.get("message") or "") if row else ""


# Failures ---------------------------------------------------------------------------


def test_an_invalid_parameter_fails_permanently_naming_the_code(broker, reconciling, clients, definition, workload):
    rds, ec2 = clients
    # Given a definition whose engine RDS refuses (the API would refuse it too: the row is written directly)
    table = AwsRelationalDatabaseDefinition
    table.update(engine="postgresql").where(table.id == definition.id).execute()

    # When a database instance is created from it
    obj = create_database(broker, definition, workload)

    # Then it fails for good, naming the AWS error code, and no instance exists
    done = wait_for(lambda: settled(obj.id))
    assert (done.status["phase"], done.creation_failed, done.reconciled) == ("Failed", True, False)
    assert "InvalidParameterValue" in done.status["message"] and "postgresql" in done.status["message"]
    assert built(rds, ec2, obj) == (0, 1, 1)
    assert "connection" not in done.status

    # And deleting it removes what the failed build made
    publish_rows(broker, store.schedule_deletion(AwsRelationalDatabaseInstance, obj.id).outbox)
    wait_for(lambda: gone(obj.id))
    assert built(rds, ec2, obj) == (0, 0, 0)


@pytest.mark.parametrize(
    "code, status, times, phase",
    [("Throttling", 400, 2, "Reconciled"), ("AccessDenied", 403, None, "Failed")],
)
def test_throttling_is_retried_and_access_denied_fails_for_good(
    broker, reconciling, clients, aws_proxy, workload, code, status, times, phase
):
    rds, ec2 = clients
    # Given AWS answers CreateDBInstance with an error: throttling twice, or access denied every time
    aws_proxy.fail("CreateDBInstance", code, status, times=times)

    # When a database instance is created in an account reached through that AWS
    obj = create_database(broker, make_definition(make_account(aws_proxy.url)), workload)

    # Then throttling is retried to success within the same reconcile, while access denied is a failure naming it
    done = wait_for(lambda: settled(obj.id))
    assert done.status["phase"] == phase
    if phase == "Reconciled":
        assert aws_proxy.count("CreateDBInstance") == 3 and built(rds, ec2, obj) == (1, 1, 1)
    else:
        assert aws_proxy.count("CreateDBInstance") == 1 and done.creation_failed
        assert "AccessDenied" in done.status["message"] and built(rds, ec2, obj) == (0, 1, 1)


# A worker killed mid-build ---------------------------------------------------------


@pytest.mark.parametrize("step", ["CreateDBSubnetGroup", "CreateSecurityGroup", "CreateDBInstance"])
def test_a_worker_killed_mid_step_leaves_no_duplicates(broker, start_worker, aws_proxy, clients, workload, step):
    rds, ec2 = clients
    # Given a worker process, and AWS holding the step's request unanswered
    definition = make_definition(make_account(aws_proxy.url))
    doomed = start_worker()
    aws_proxy.hold(step)

    # When a database instance is created, and its worker is killed (SIGKILL) while that request is held
    obj = create_database(broker, definition, workload)
    aws_proxy.wait_held(timeout=30)
    password = store.get(AwsRelationalDatabaseInstance, obj.id).master_password
    assert password or step != "CreateDBInstance"  # the password is stored before the instance is asked for
    doomed.kill()
    doomed.wait()

    # And AWS carries the request out anyway, the answer going nowhere
    aws_proxy.release()
    wait_for(lambda: aws_proxy.count(step) == 1 and not aws_proxy.held)

    # And another worker takes over
    start_worker()

    # Then the build ends reconciled with one of everything, the step's request made once, the password kept
    done = wait_for(lambda: settled(obj.id), timeout=60)
    assert done.status["phase"] == "Reconciled", done.status
    assert built(rds, ec2, obj) == (1, 1, 1)
    assert aws_proxy.count(step) == 1
    assert password is None or done.master_password == password


# The runtime's network --------------------------------------------------------------


def test_a_workload_on_an_eks_runtime_gets_its_database_in_the_runtime_vpc(
    broker, reconciling, clients, account, definition
):
    rds, ec2 = clients
    # Given an EKS runtime in the database's account, with its own VPC and subnets in two zones
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = sorted(
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=f"{REGION}{zone}")["Subnet"][
            "SubnetId"
        ]
        for i, zone in enumerate("ab")
    )
    eks = make_eks_runtime(account)
    workload = make_workload(runtime_id=eks.kubernetes_runtime_instance_id)

    # When a database instance is created for a workload on it before the cluster recorded its VPC
    obj = create_database(broker, definition, workload)

    # Then it waits for the VPC rather than building elsewhere
    wait_for(lambda: "to record its VPC" in current_message(obj.id))
    assert built(rds, ec2, obj) == (0, 0, 0)

    # When the EKS reconciler records its VPC
    store.merge_status(AwsEksKubernetesRuntimeInstance, eks.id, {"inventory": {"vpc_id": vpc, "subnet_ids": subnets}})

    # Then the database is built in that VPC, reachable from its CIDR
    done = wait_for(lambda: settled(obj.id))
    assert done.status["phase"] == "Reconciled"
    (subnet_group,) = subnet_groups_of(rds, obj)
    assert subnet_group["VpcId"] == vpc
    assert sorted(s["SubnetIdentifier"] for s in subnet_group["Subnets"]) == subnets
    (group,) = security_groups_of(ec2, obj)
    assert group["VpcId"] == vpc and [r["CidrIp"] for r in group["IpPermissions"][0]["IpRanges"]] == ["10.20.0.0/16"]
    assert "EKS runtime 'eks'" in done.status["inventory"]["network"]


def make_eks_runtime(account) -> AwsEksKubernetesRuntimeInstance:
    runtime_definition = store.create(KubernetesRuntimeDefinition, {"name": "eks", "infra_provider": "eks"}).obj
    runtime = store.create(
        KubernetesRuntimeInstance, {"name": "eks", "kubernetes_runtime_definition_id": runtime_definition.id}
    ).obj
    eks_definition = store.create(AwsEksKubernetesRuntimeDefinition, {"name": "eks", "aws_account_id": account.id}).obj
    fields = {
        "name": "eks",
        "aws_eks_kubernetes_runtime_definition_id": eks_definition.id,
        "kubernetes_runtime_instance_id": runtime.id,
        "region": REGION,
    }
    return store.create(AwsEksKubernetesRuntimeInstance, fields).obj


# Names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("orders", "threeport-orders-12345678"),
        ("Orders_DB.prod", "threeport-orders-db-prod-12345678"),
        ("a--b__", "threeport-a-b-12345678"),
        ("---", "threeport-12345678"),
        ("x" * 80, "threeport-" + "x" * 44 + "-12345678"),
        ("a" * 43 + "-b", "threeport-" + "a" * 43 + "-12345678"),
    ],
)
def test_identifiers_follow_rds_rules(name, expected):
    obj = AwsRelationalDatabaseInstance(id=uuid.UUID("12345678-0000-0000-0000-000000000000"), name=name)
    identifier = aws_rds.identifier_for(obj)
    assert identifier == expected
    assert len(identifier) <= 63 and re.fullmatch(r"[a-z](?!.*--)[a-z0-9-]*[a-z0-9]", identifier)
