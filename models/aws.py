"""AWS: accounts, and the infrastructure the control plane builds in them.

An :class:`AwsAccount` holds how to act in an account: access keys, or a
role to assume (secret fields are encrypted at rest and never returned), and
optionally an endpoint override (moto, LocalStack, a private endpoint).
Each kind of infrastructure has a definition (what to build) and instances
(one build each): EKS clusters, which become Kubernetes runtimes; RDS
databases and S3 buckets, each serving a workload instance. Reconciled on
the ``aws`` queue.
"""

from __future__ import annotations

from typing import Any

import peewee

from .base import ReconciledModel
from .errors import InvalidObject
from .kubernetes import KubernetesRuntimeDefinition, KubernetesRuntimeInstance
from .registry import register
from .schema import BoundedInteger
from .secrets import EncryptedField
from .workloads import WorkloadInstance

__all__ = [
    "AwsAccount",
    "AwsEksKubernetesRuntimeDefinition",
    "AwsEksKubernetesRuntimeInstance",
    "AwsRelationalDatabaseDefinition",
    "AwsRelationalDatabaseInstance",
    "AwsObjectStorageBucketDefinition",
    "AwsObjectStorageBucketInstance",
    "DATABASE_ENGINES",
]

#: RDS engines a database definition may ask for.
DATABASE_ENGINES = ("postgres", "mysql", "mariadb")


@register
class AwsAccount(ReconciledModel):
    kind = "AwsAccount"
    plural = "aws-accounts"
    queue = "aws"
    summary = "An AWS account and the credentials the control plane acts with."
    unique_constraints = {"aws_accounts_one_default": "another AwsAccount is the default account already"}

    account_id = peewee.TextField(help_text="The 12-digit AWS account id.")
    default_region = peewee.TextField(help_text="The region resources are built in unless told otherwise.")
    default_account = peewee.BooleanField(default=False, help_text="Used when a definition names no account.")
    access_key_id = EncryptedField(null=True, help_text="Access key id (secret).")
    secret_access_key = EncryptedField(null=True, help_text="Secret access key (secret).")
    role_arn = peewee.TextField(null=True, help_text="A role to assume, with the keys or the ambient credentials.")
    external_id = peewee.TextField(null=True, help_text="External id to give when assuming the role.")
    endpoint_url = peewee.TextField(null=True, help_text="Override of every AWS endpoint (moto, LocalStack, ...).")

    class Meta:
        table_name = "aws_accounts"

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        account_id = values.get("account_id") or ""
        if not (len(account_id) == 12 and account_id.isascii() and account_id.isdigit()):
            raise InvalidObject(f"field 'account_id' must be 12 digits, not {account_id!r}")
        if bool(values.get("access_key_id")) != bool(values.get("secret_access_key")):
            raise InvalidObject("fields 'access_key_id' and 'secret_access_key' go together")
        if not values.get("access_key_id") and not values.get("role_arn"):
            raise InvalidObject("give access keys ('access_key_id', 'secret_access_key') or a 'role_arn'")


@register
class AwsEksKubernetesRuntimeDefinition(ReconciledModel):
    kind = "AwsEksKubernetesRuntimeDefinition"
    plural = "aws-eks-kubernetes-runtime-definitions"
    queue = "aws"
    summary = "An EKS cluster to build: account, zones and the default node group."
    depends_on = ("aws_account",)

    aws_account = peewee.ForeignKeyField(AwsAccount, backref="+", help_text="The account the cluster is built in.")
    kubernetes_runtime_definition = peewee.ForeignKeyField(
        KubernetesRuntimeDefinition, backref="+", null=True, help_text="The runtime definition this one builds."
    )
    zone_count = BoundedInteger(2, 6, default=2, help_text="Availability zones to spread the cluster over.")
    default_node_group_instance_type = peewee.TextField(default="t3.medium", help_text="EC2 instance type of nodes.")
    default_node_group_initial_size = peewee.IntegerField(default=2, help_text="Nodes at first.")
    default_node_group_minimum_size = peewee.IntegerField(default=1, help_text="Fewest nodes.")
    default_node_group_maximum_size = peewee.IntegerField(default=4, help_text="Most nodes.")

    class Meta:
        table_name = "aws_eks_kubernetes_runtime_definitions"

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        low = values.get("default_node_group_minimum_size", 1)
        size = values.get("default_node_group_initial_size", 2)
        high = values.get("default_node_group_maximum_size", 4)
        if not 0 <= low <= size <= high:
            raise InvalidObject("node group sizes must satisfy 0 <= minimum <= initial <= maximum")


@register
class AwsEksKubernetesRuntimeInstance(ReconciledModel):
    kind = "AwsEksKubernetesRuntimeInstance"
    plural = "aws-eks-kubernetes-runtime-instances"
    queue = "aws"
    summary = "One EKS cluster; once active it fills in its KubernetesRuntimeInstance."
    depends_on = ("aws_eks_kubernetes_runtime_definition",)

    aws_eks_kubernetes_runtime_definition = peewee.ForeignKeyField(
        AwsEksKubernetesRuntimeDefinition, backref="+", help_text="The definition this cluster follows."
    )
    kubernetes_runtime_instance = peewee.ForeignKeyField(
        KubernetesRuntimeInstance, backref="+", null=True, help_text="The runtime this cluster becomes."
    )
    region = peewee.TextField(null=True, help_text="The region; the account's default when not given.")

    class Meta:
        table_name = "aws_eks_kubernetes_runtime_instances"


@register
class AwsRelationalDatabaseDefinition(ReconciledModel):
    kind = "AwsRelationalDatabaseDefinition"
    plural = "aws-relational-database-definitions"
    queue = "aws"
    summary = "An RDS database to build: engine, version, size and storage."
    depends_on = ("aws_account",)

    aws_account = peewee.ForeignKeyField(AwsAccount, backref="+", help_text="The account the database is built in.")
    engine = peewee.TextField(choices=[(e, e) for e in DATABASE_ENGINES], help_text="The database engine.")
    engine_version = peewee.TextField(help_text="The engine version, e.g. '16.4'.")
    database_name = peewee.TextField(help_text="The database created in the instance.")
    database_port = BoundedInteger(1, 65535, help_text="The port it listens on.")
    machine_size = peewee.TextField(default="db.t3.micro", help_text="The RDS instance class.")
    storage_gib = BoundedInteger(20, 65536, default=20, help_text="Allocated storage in GiB.")
    backup_days = BoundedInteger(0, 35, default=0, help_text="Days of automated backups to keep.")
    workload_secret_name = peewee.TextField(help_text="The Kubernetes Secret the workload reads its connection from.")

    class Meta:
        table_name = "aws_relational_database_definitions"


@register
class AwsRelationalDatabaseInstance(ReconciledModel):
    kind = "AwsRelationalDatabaseInstance"
    plural = "aws-relational-database-instances"
    queue = "aws"
    summary = "One RDS database serving a workload instance."
    depends_on = ("aws_relational_database_definition", "workload_instance")

    aws_relational_database_definition = peewee.ForeignKeyField(
        AwsRelationalDatabaseDefinition, backref="+", help_text="The definition this database follows."
    )
    workload_instance = peewee.ForeignKeyField(
        WorkloadInstance, backref="+", help_text="The workload that uses it (gets the connection Secret)."
    )
    master_password = EncryptedField(
        null=True, help_text="The generated master password (set by the reconciler; secret, never shown)."
    )

    #: The password is the reconciler's (see models.store.write_fields), not the client's.
    spec_fields = ("aws_relational_database_definition", "workload_instance")

    class Meta:
        table_name = "aws_relational_database_instances"


@register
class AwsObjectStorageBucketDefinition(ReconciledModel):
    kind = "AwsObjectStorageBucketDefinition"
    plural = "aws-object-storage-bucket-definitions"
    queue = "aws"
    summary = "An S3 bucket to build, and how a workload reaches it."
    depends_on = ("aws_account",)

    aws_account = peewee.ForeignKeyField(AwsAccount, backref="+", help_text="The account the bucket is built in.")
    public_read_access = peewee.BooleanField(default=False, help_text="Let anyone read the bucket's objects.")
    workload_service_account_name = peewee.TextField(
        help_text="The workload's Kubernetes service account, given access to the bucket (IRSA)."
    )
    workload_bucket_env_var = peewee.TextField(
        default="S3_BUCKET_NAME", help_text="The environment variable that tells the workload the bucket's name."
    )

    class Meta:
        table_name = "aws_object_storage_bucket_definitions"


@register
class AwsObjectStorageBucketInstance(ReconciledModel):
    kind = "AwsObjectStorageBucketInstance"
    plural = "aws-object-storage-bucket-instances"
    queue = "aws"
    summary = "One S3 bucket serving a workload instance."
    depends_on = ("aws_object_storage_bucket_definition", "workload_instance")

    aws_object_storage_bucket_definition = peewee.ForeignKeyField(
        AwsObjectStorageBucketDefinition, backref="+", help_text="The definition this bucket follows."
    )
    workload_instance = peewee.ForeignKeyField(WorkloadInstance, backref="+", help_text="The workload that uses it.")

    class Meta:
        table_name = "aws_object_storage_bucket_instances"
