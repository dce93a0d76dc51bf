"""Peewee models, database binding, migrations, the outbox and the store functions.

Importing the package registers every built-in kind in :mod:`models.registry`.
Writes go through :mod:`models.store`; each is one retried transaction.
"""

from . import registry, secrets, store
from .attachments import AttachedObjectReference
from .aws import (
    AwsAccount,
    AwsEksKubernetesRuntimeDefinition,
    AwsEksKubernetesRuntimeInstance,
    AwsObjectStorageBucketDefinition,
    AwsObjectStorageBucketInstance,
    AwsRelationalDatabaseDefinition,
    AwsRelationalDatabaseInstance,
)
from .base import BaseModel, ReconciledModel
from .database import bind, database_from_url, db
from .errors import (
    ConfigurationError,
    Conflict,
    InvalidObject,
    MigrationError,
    NotFound,
    PreconditionFailed,
    RetriesExhausted,
    StoreError,
    Unavailable,
)
from .events import Event, record_event
from .extension_kinds import Extension
from .extensions import ExtensionApiRoute
from .gateways import DomainNameDefinition, DomainNameInstance, GatewayDefinition, GatewayInstance
from .kubernetes import KubernetesRuntimeDefinition, KubernetesRuntimeInstance
from .migrations import migrate
from .outbox import Outbox
from .secrets_storage import SecretDefinition, SecretInstance
from .transactions import run_in_transaction, transactional
from .workloads import (
    WorkloadDefinition,
    WorkloadEvent,
    WorkloadInstance,
    WorkloadResourceDefinition,
    WorkloadResourceInstance,
)

__all__ = [
    # The database
    "db",
    "bind",
    "database_from_url",
    "migrate",
    "run_in_transaction",
    "transactional",
    # Models and where to find them
    "BaseModel",
    "ReconciledModel",
    "WorkloadDefinition",
    "WorkloadResourceDefinition",
    "WorkloadInstance",
    "WorkloadResourceInstance",
    "WorkloadEvent",
    "KubernetesRuntimeDefinition",
    "KubernetesRuntimeInstance",
    "AwsAccount",
    "AwsEksKubernetesRuntimeDefinition",
    "AwsEksKubernetesRuntimeInstance",
    "AwsRelationalDatabaseDefinition",
    "AwsRelationalDatabaseInstance",
    "AwsObjectStorageBucketDefinition",
    "AwsObjectStorageBucketInstance",
    "DomainNameDefinition",
    "DomainNameInstance",
    "GatewayDefinition",
    "GatewayInstance",
    "SecretDefinition",
    "SecretInstance",
    "AttachedObjectReference",
    "Event",
    "Extension",
    "ExtensionApiRoute",
    "record_event",
    "Outbox",
    "registry",
    "secrets",
    "store",
    # Errors
    "StoreError",
    "NotFound",
    "Conflict",
    "PreconditionFailed",
    "InvalidObject",
    "RetriesExhausted",
    "MigrationError",
    "Unavailable",
    "ConfigurationError",
]
