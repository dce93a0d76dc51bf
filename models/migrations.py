"""Schema migrations: an ordered list, applied once each, safe to run from many processes at once.

``migrate(database)`` records applied migrations in ``schema_migrations`` and
applies the missing ones in order, each in its own transaction together with
its record, so a migration is either fully applied and recorded or not at
all. Every one of those transactions first takes a cluster-wide lock, so when
several processes start together (``threeport up``, replicas of a
deployment) one applies and the others find it recorded:

- PostgreSQL: ``pg_advisory_xact_lock``, released at commit. The transaction
  runs at READ COMMITTED, so that its reads after the wait see what the
  lock holder committed (a SERIALIZABLE snapshot would be taken before the
  wait, and see the schema as it was).
- CockroachDB (no advisory locks): ``SELECT … FOR UPDATE`` on the one row of
  ``schema_lock``; a transaction that waited is pushed and retried on 40001
  by :func:`~models.transactions.run_in_transaction`.

Migrations are written as explicit SQL that both databases accept, and are
never edited once released: a change to the schema is a new migration.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Union

import peewee
from playhouse.cockroachdb import CockroachDatabase

from .errors import MigrationError, StoreError
from .transactions import run_in_transaction

__all__ = ["Migration", "MIGRATIONS", "migrate", "applied_migrations"]

#: A step is a SQL statement, or a function given the database (for data migrations).
Step = Union[str, Callable[[peewee.Database], None]]

#: ``pg_advisory_xact_lock`` key of schema migrations (any constant; this is "3port" in ASCII).
ADVISORY_LOCK_KEY = 0x33706F7274


@dataclass(frozen=True)
class Migration:
    """One schema change: an id (sorts in order of application) and its steps."""

    id: str
    steps: tuple[Step, ...]


# The lifecycle columns of a reconciled kind's table, as of 0001. Frozen like
# the migrations that use it: a later lifecycle change is a new migration.
_LIFECYCLE_COLUMNS_0001 = """
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    generation BIGINT NOT NULL DEFAULT 1,
    observed_generation BIGINT NOT NULL DEFAULT 0,
    reconciled BOOLEAN NOT NULL DEFAULT FALSE,
    creation_acknowledged BOOLEAN NOT NULL DEFAULT FALSE,
    creation_confirmed BOOLEAN NOT NULL DEFAULT FALSE,
    creation_failed BOOLEAN NOT NULL DEFAULT FALSE,
    deletion_scheduled TIMESTAMPTZ,
    deletion_acknowledged BOOLEAN NOT NULL DEFAULT FALSE,
    deletion_confirmed BOOLEAN NOT NULL DEFAULT FALSE,
    interrupt_reconciliation BOOLEAN NOT NULL DEFAULT FALSE,
    status JSONB NOT NULL DEFAULT '{}',
    resource_version BIGINT NOT NULL DEFAULT 1"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_workloads_and_outbox",
        (
            f"""CREATE TABLE workload_definitions ({_LIFECYCLE_COLUMNS_0001},
    yaml_document TEXT NOT NULL,
    CONSTRAINT workload_definitions_name_key UNIQUE (name)
)""",
            "CREATE INDEX workload_definitions_created_at_id ON workload_definitions (created_at, id)",
            # The resync sweep's scan: only objects not reconciled yet are in it.
            """CREATE INDEX workload_definitions_unreconciled ON workload_definitions (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            """CREATE TABLE workload_resource_definitions (
    id UUID PRIMARY KEY,
    workload_definition_id UUID NOT NULL REFERENCES workload_definitions (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    json_definition JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT workload_resource_definitions_document_key UNIQUE (workload_definition_id, name)
)""",
            """CREATE TABLE outbox (
    id UUID PRIMARY KEY,
    queue TEXT NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    object_id UUID NOT NULL,
    generation BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    payload JSONB NOT NULL DEFAULT '{}'
)""",
            "CREATE INDEX outbox_created_at ON outbox (created_at)",
        ),
    ),
    Migration(
        "0002_object_model",
        (
            f"""CREATE TABLE kubernetes_runtime_definitions ({_LIFECYCLE_COLUMNS_0001},
    infra_provider TEXT NOT NULL,
    high_availability BOOLEAN NOT NULL,
    CONSTRAINT kubernetes_runtime_definitions_name_key UNIQUE (name)
)""",
            """CREATE INDEX kubernetes_runtime_definitions_created_at_id
    ON kubernetes_runtime_definitions (created_at, id)""",
            """CREATE INDEX kubernetes_runtime_definitions_unreconciled
    ON kubernetes_runtime_definitions (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            f"""CREATE TABLE kubernetes_runtime_instances ({_LIFECYCLE_COLUMNS_0001},
    kubernetes_runtime_definition_id UUID NOT NULL REFERENCES kubernetes_runtime_definitions (id),
    location TEXT,
    default_runtime BOOLEAN NOT NULL,
    api_endpoint TEXT,
    ca_certificate TEXT,
    certificate TEXT,
    certificate_key TEXT,
    connection_token TEXT,
    kubeconfig TEXT,
    CONSTRAINT kubernetes_runtime_instances_name_key UNIQUE (name)
)""",
            """CREATE INDEX kubernetes_runtime_instances_created_at_id
    ON kubernetes_runtime_instances (created_at, id)""",
            """CREATE UNIQUE INDEX kubernetes_runtime_instances_one_default
    ON kubernetes_runtime_instances (default_runtime) WHERE default_runtime""",
            """CREATE INDEX kubernetes_runtime_instances_unreconciled ON kubernetes_runtime_instances (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            """CREATE INDEX kubernetes_runtime_instances_kubernetes_runtime_definition_id
    ON kubernetes_runtime_instances (kubernetes_runtime_definition_id)""",
            f"""CREATE TABLE workload_instances ({_LIFECYCLE_COLUMNS_0001},
    workload_definition_id UUID NOT NULL REFERENCES workload_definitions (id),
    kubernetes_runtime_instance_id UUID REFERENCES kubernetes_runtime_instances (id),
    CONSTRAINT workload_instances_name_key UNIQUE (name)
)""",
            "CREATE INDEX workload_instances_created_at_id ON workload_instances (created_at, id)",
            """CREATE INDEX workload_instances_unreconciled ON workload_instances (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            """CREATE INDEX workload_instances_workload_definition_id
    ON workload_instances (workload_definition_id)""",
            """CREATE INDEX workload_instances_kubernetes_runtime_instance_id
    ON workload_instances (kubernetes_runtime_instance_id)""",
            """CREATE TABLE workload_resource_instances (id UUID NOT NULL PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    workload_instance_id UUID NOT NULL REFERENCES workload_instances (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    json_definition JSONB NOT NULL
)""",
            """CREATE INDEX workload_resource_instances_created_at_id
    ON workload_resource_instances (created_at, id)""",
            """CREATE UNIQUE INDEX workload_resource_instances_workload_instance_id_name_key
    ON workload_resource_instances (workload_instance_id, name)""",
            """CREATE TABLE workload_events (id UUID NOT NULL PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    workload_instance_id UUID NOT NULL REFERENCES workload_instances (id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    involved_object TEXT NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL
)""",
            "CREATE INDEX workload_events_created_at_id ON workload_events (created_at, id)",
            "CREATE INDEX workload_events_workload_instance_id ON workload_events (workload_instance_id)",
            f"""CREATE TABLE aws_accounts ({_LIFECYCLE_COLUMNS_0001},
    account_id TEXT NOT NULL,
    default_region TEXT NOT NULL,
    default_account BOOLEAN NOT NULL,
    access_key_id TEXT,
    secret_access_key TEXT,
    role_arn TEXT,
    external_id TEXT,
    endpoint_url TEXT,
    CONSTRAINT aws_accounts_name_key UNIQUE (name)
)""",
            "CREATE INDEX aws_accounts_created_at_id ON aws_accounts (created_at, id)",
            """CREATE UNIQUE INDEX aws_accounts_one_default ON aws_accounts (default_account)
    WHERE default_account""",
            """CREATE INDEX aws_accounts_unreconciled ON aws_accounts (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            f"""CREATE TABLE aws_eks_kubernetes_runtime_definitions ({_LIFECYCLE_COLUMNS_0001},
    aws_account_id UUID NOT NULL REFERENCES aws_accounts (id),
    kubernetes_runtime_definition_id UUID REFERENCES kubernetes_runtime_definitions (id),
    zone_count INTEGER NOT NULL,
    default_node_group_instance_type TEXT NOT NULL,
    default_node_group_initial_size INTEGER NOT NULL,
    default_node_group_minimum_size INTEGER NOT NULL,
    default_node_group_maximum_size INTEGER NOT NULL,
    CONSTRAINT aws_eks_kubernetes_runtime_definitions_name_key UNIQUE (name)
)""",
            """CREATE INDEX aws_eks_kubernetes_runtime_definitions_created_at_id
    ON aws_eks_kubernetes_runtime_definitions (created_at, id)""",
            """CREATE INDEX aws_eks_kubernetes_runtime_definitions_unreconciled
    ON aws_eks_kubernetes_runtime_definitions (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            """CREATE INDEX aws_eks_kubernetes_runtime_definitions_aws_account_id
    ON aws_eks_kubernetes_runtime_definitions (aws_account_id)""",
            """CREATE INDEX aws_eks_kubernetes_runtime_definitions_fk_kubernetes_4
    ON aws_eks_kubernetes_runtime_definitions (kubernetes_runtime_definition_id)""",
            f"""CREATE TABLE aws_eks_kubernetes_runtime_instances ({_LIFECYCLE_COLUMNS_0001},
    aws_eks_kubernetes_runtime_definition_id UUID NOT NULL REFERENCES aws_eks_kubernetes_runtime_definitions (id),
    kubernetes_runtime_instance_id UUID REFERENCES kubernetes_runtime_instances (id),
    region TEXT,
    CONSTRAINT aws_eks_kubernetes_runtime_instances_name_key UNIQUE (name)
)""",
            """CREATE INDEX aws_eks_kubernetes_runtime_instances_created_at_id
    ON aws_eks_kubernetes_runtime_instances (created_at, id)""",
            """CREATE INDEX aws_eks_kubernetes_runtime_instances_unreconciled
    ON aws_eks_kubernetes_runtime_instances (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            """CREATE INDEX aws_eks_kubernetes_runtime_instances_fk_aws_3
    ON aws_eks_kubernetes_runtime_instances (aws_eks_kubernetes_runtime_definition_id)""",
            """CREATE INDEX aws_eks_kubernetes_runtime_instances_fk_kubernetes_4
    ON aws_eks_kubernetes_runtime_instances (kubernetes_runtime_instance_id)""",
            f"""CREATE TABLE aws_relational_database_definitions ({_LIFECYCLE_COLUMNS_0001},
    aws_account_id UUID NOT NULL REFERENCES aws_accounts (id),
    engine TEXT NOT NULL,
    engine_version TEXT NOT NULL,
    database_name TEXT NOT NULL,
    database_port INTEGER NOT NULL,
    machine_size TEXT NOT NULL,
    storage_gib INTEGER NOT NULL,
    backup_days INTEGER NOT NULL,
    workload_secret_name TEXT NOT NULL,
    CONSTRAINT aws_relational_database_definitions_name_key UNIQUE (name)
)""",
            """CREATE INDEX aws_relational_database_definitions_created_at_id
    ON aws_relational_database_definitions (created_at, id)""",
            """CREATE INDEX aws_relational_database_definitions_unreconciled
    ON aws_relational_database_definitions (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            """CREATE INDEX aws_relational_database_definitions_aws_account_id
    ON aws_relational_database_definitions (aws_account_id)""",
            f"""CREATE TABLE aws_relational_database_instances ({_LIFECYCLE_COLUMNS_0001},
    aws_relational_database_definition_id UUID NOT NULL REFERENCES aws_relational_database_definitions (id),
    workload_instance_id UUID NOT NULL REFERENCES workload_instances (id),
    master_password TEXT,
    CONSTRAINT aws_relational_database_instances_name_key UNIQUE (name)
)""",
            """CREATE INDEX aws_relational_database_instances_created_at_id
    ON aws_relational_database_instances (created_at, id)""",
            """CREATE INDEX aws_relational_database_instances_unreconciled
    ON aws_relational_database_instances (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            """CREATE INDEX aws_relational_database_instances_fk_aws_3
    ON aws_relational_database_instances (aws_relational_database_definition_id)""",
            """CREATE INDEX aws_relational_database_instances_workload_instance_id
    ON aws_relational_database_instances (workload_instance_id)""",
            f"""CREATE TABLE aws_object_storage_bucket_definitions ({_LIFECYCLE_COLUMNS_0001},
    aws_account_id UUID NOT NULL REFERENCES aws_accounts (id),
    public_read_access BOOLEAN NOT NULL,
    workload_service_account_name TEXT NOT NULL,
    workload_bucket_env_var TEXT NOT NULL,
    CONSTRAINT aws_object_storage_bucket_definitions_name_key UNIQUE (name)
)""",
            """CREATE INDEX aws_object_storage_bucket_definitions_created_at_id
    ON aws_object_storage_bucket_definitions (created_at, id)""",
            """CREATE INDEX aws_object_storage_bucket_definitions_unreconciled
    ON aws_object_storage_bucket_definitions (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            """CREATE INDEX aws_object_storage_bucket_definitions_aws_account_id
    ON aws_object_storage_bucket_definitions (aws_account_id)""",
            f"""CREATE TABLE aws_object_storage_bucket_instances ({_LIFECYCLE_COLUMNS_0001},
    aws_object_storage_bucket_definition_id UUID NOT NULL REFERENCES aws_object_storage_bucket_definitions (id),
    workload_instance_id UUID NOT NULL REFERENCES workload_instances (id),
    CONSTRAINT aws_object_storage_bucket_instances_name_key UNIQUE (name)
)""",
            """CREATE INDEX aws_object_storage_bucket_instances_created_at_id
    ON aws_object_storage_bucket_instances (created_at, id)""",
            """CREATE INDEX aws_object_storage_bucket_instances_unreconciled
    ON aws_object_storage_bucket_instances (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            """CREATE INDEX aws_object_storage_bucket_instances_fk_aws_3
    ON aws_object_storage_bucket_instances (aws_object_storage_bucket_definition_id)""",
            """CREATE INDEX aws_object_storage_bucket_instances_workload_instance_id
    ON aws_object_storage_bucket_instances (workload_instance_id)""",
            f"""CREATE TABLE domain_name_definitions ({_LIFECYCLE_COLUMNS_0001},
    domain TEXT NOT NULL,
    zone TEXT NOT NULL,
    admin_email TEXT NOT NULL,
    CONSTRAINT domain_name_definitions_name_key UNIQUE (name)
)""",
            "CREATE INDEX domain_name_definitions_created_at_id ON domain_name_definitions (created_at, id)",
            """CREATE INDEX domain_name_definitions_unreconciled ON domain_name_definitions (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            f"""CREATE TABLE domain_name_instances ({_LIFECYCLE_COLUMNS_0001},
    domain_name_definition_id UUID NOT NULL REFERENCES domain_name_definitions (id),
    workload_instance_id UUID NOT NULL REFERENCES workload_instances (id),
    kubernetes_runtime_instance_id UUID REFERENCES kubernetes_runtime_instances (id),
    CONSTRAINT domain_name_instances_name_key UNIQUE (name)
)""",
            "CREATE INDEX domain_name_instances_created_at_id ON domain_name_instances (created_at, id)",
            """CREATE INDEX domain_name_instances_unreconciled ON domain_name_instances (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            """CREATE INDEX domain_name_instances_domain_name_definition_id
    ON domain_name_instances (domain_name_definition_id)""",
            """CREATE INDEX domain_name_instances_workload_instance_id
    ON domain_name_instances (workload_instance_id)""",
            """CREATE INDEX domain_name_instances_kubernetes_runtime_instance_id
    ON domain_name_instances (kubernetes_runtime_instance_id)""",
            f"""CREATE TABLE gateway_definitions ({_LIFECYCLE_COLUMNS_0001},
    http_ports JSONB NOT NULL,
    tcp_ports JSONB NOT NULL,
    service_name TEXT,
    sub_domain TEXT,
    domain_name_definition_id UUID REFERENCES domain_name_definitions (id),
    CONSTRAINT gateway_definitions_name_key UNIQUE (name)
)""",
            "CREATE INDEX gateway_definitions_created_at_id ON gateway_definitions (created_at, id)",
            """CREATE INDEX gateway_definitions_unreconciled ON gateway_definitions (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            """CREATE INDEX gateway_definitions_domain_name_definition_id
    ON gateway_definitions (domain_name_definition_id)""",
            f"""CREATE TABLE gateway_instances ({_LIFECYCLE_COLUMNS_0001},
    gateway_definition_id UUID NOT NULL REFERENCES gateway_definitions (id),
    workload_instance_id UUID NOT NULL REFERENCES workload_instances (id),
    kubernetes_runtime_instance_id UUID REFERENCES kubernetes_runtime_instances (id),
    CONSTRAINT gateway_instances_name_key UNIQUE (name)
)""",
            "CREATE INDEX gateway_instances_created_at_id ON gateway_instances (created_at, id)",
            """CREATE INDEX gateway_instances_unreconciled ON gateway_instances (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            "CREATE INDEX gateway_instances_gateway_definition_id ON gateway_instances (gateway_definition_id)",
            "CREATE INDEX gateway_instances_workload_instance_id ON gateway_instances (workload_instance_id)",
            """CREATE INDEX gateway_instances_kubernetes_runtime_instance_id
    ON gateway_instances (kubernetes_runtime_instance_id)""",
            """CREATE TABLE attached_object_references (id UUID NOT NULL PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    object_type TEXT NOT NULL,
    object_id UUID NOT NULL,
    attached_object_type TEXT NOT NULL,
    attached_object_id UUID NOT NULL
)""",
            "CREATE INDEX attached_object_references_created_at_id ON attached_object_references (created_at, id)",
            """CREATE UNIQUE INDEX attached_object_references_unique_object_id
    ON attached_object_references (object_id, attached_object_id, object_type, attached_object_type)""",
            """CREATE INDEX attached_object_references_attached_object_id
    ON attached_object_references (attached_object_id)""",
            """CREATE TABLE events (id UUID NOT NULL PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    object_kind TEXT NOT NULL,
    object_id UUID NOT NULL,
    type TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL
)""",
            "CREATE INDEX events_created_at_id ON events (created_at, id)",
            "CREATE INDEX events_object_id_created_at ON events (object_id, created_at)",
        ),
    ),
    Migration(
        "0003_extension_routes",
        (
            """CREATE TABLE extension_api_routes (id UUID NOT NULL PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    extension TEXT NOT NULL,
    prefix TEXT NOT NULL,
    upstream TEXT NOT NULL,
    timeout_seconds INTEGER NOT NULL
)""",
            "CREATE INDEX extension_api_routes_created_at_id ON extension_api_routes (created_at, id)",
            "CREATE UNIQUE INDEX extension_api_routes_prefix ON extension_api_routes (prefix)",
        ),
    ),
    Migration(
        "0004_secrets_storage",
        (
            f"""CREATE TABLE secret_definitions ({_LIFECYCLE_COLUMNS_0001},
    aws_account_id UUID REFERENCES aws_accounts (id),
    data TEXT NOT NULL,
    CONSTRAINT secret_definitions_name_key UNIQUE (name)
)""",
            "CREATE INDEX secret_definitions_created_at_id ON secret_definitions (created_at, id)",
            """CREATE INDEX secret_definitions_unreconciled ON secret_definitions (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            "CREATE INDEX secret_definitions_aws_account_id ON secret_definitions (aws_account_id)",
            f"""CREATE TABLE secret_instances ({_LIFECYCLE_COLUMNS_0001},
    secret_definition_id UUID NOT NULL REFERENCES secret_definitions (id),
    workload_instance_id UUID NOT NULL REFERENCES workload_instances (id),
    kubernetes_runtime_instance_id UUID REFERENCES kubernetes_runtime_instances (id),
    CONSTRAINT secret_instances_name_key UNIQUE (name)
)""",
            "CREATE INDEX secret_instances_created_at_id ON secret_instances (created_at, id)",
            """CREATE INDEX secret_instances_unreconciled ON secret_instances (updated_at)
    WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL""",
            "CREATE INDEX secret_instances_secret_definition_id ON secret_instances (secret_definition_id)",
            "CREATE INDEX secret_instances_workload_instance_id ON secret_instances (workload_instance_id)",
            """CREATE INDEX secret_instances_kubernetes_runtime_instance_id
    ON secret_instances (kubernetes_runtime_instance_id)""",
        ),
    ),
    Migration(
        "0005_extensions",
        (
            """CREATE TABLE extensions (id UUID NOT NULL PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    domain TEXT NOT NULL,
    version TEXT NOT NULL,
    queue TEXT,
    kinds JSONB NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    updated_at TIMESTAMPTZ NOT NULL,
    resource_version BIGINT NOT NULL DEFAULT 1
)""",
            "CREATE INDEX extensions_created_at_id ON extensions (created_at, id)",
            "CREATE UNIQUE INDEX extensions_domain_version ON extensions (domain, version)",
        ),
    ),
)


def migrate(database: peewee.Database, *, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[str]:
    """Apply the migrations ``database`` lacks, in order; return the ids this call applied.

    Raises MigrationError naming the migration that failed (its error is the cause).
    """
    run = functools.partial(run_in_transaction, database=database)
    with database.connection_context():
        if _is_cockroach(database):
            _run_or_fail(run, functools.partial(_create_lock_row, database), "bootstrap")
        _run_or_fail(run, functools.partial(_create_migrations_table, database), "bootstrap")
        return [
            migration.id
            for migration in migrations
            if _run_or_fail(run, functools.partial(_apply, database, migration), migration.id)
        ]


def applied_migrations(database: peewee.Database) -> list[str]:
    """Ids recorded in ``schema_migrations``, in order (empty before the first :func:`migrate`)."""

    def read() -> list[str]:
        if not database.table_exists("schema_migrations"):
            return []
        return [row[0] for row in database.execute_sql("SELECT id FROM schema_migrations ORDER BY id").fetchall()]

    return run_in_transaction(read, database=database)


def _run_or_fail(run: Callable, step: Callable[[], bool | None], what: str) -> bool | None:
    """``run(step)``, with a failure reported as the failure of migration ``what``."""
    try:
        return run(step)
    except StoreError as exc:
        raise MigrationError(f"migration {what} failed: {exc}") from exc


def _create_lock_row(database: peewee.Database) -> None:
    """CockroachDB only: the row that stands in for an advisory lock (its own transaction, before any DDL)."""
    database.execute_sql("CREATE TABLE IF NOT EXISTS schema_lock (id INT PRIMARY KEY)")
    database.execute_sql("INSERT INTO schema_lock (id) VALUES (1) ON CONFLICT (id) DO NOTHING")


def _create_migrations_table(database: peewee.Database) -> None:
    _lock(database)
    database.execute_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
    )


def _apply(database: peewee.Database, migration: Migration) -> bool:
    """Apply ``migration`` unless it is recorded; whether it was applied now."""
    _lock(database)
    if database.execute_sql("SELECT 1 FROM schema_migrations WHERE id = %s", (migration.id,)).fetchone():
        return False
    for step in migration.steps:
        if callable(step):
            step(database)
        else:
            database.execute_sql(step)
    database.execute_sql("INSERT INTO schema_migrations (id, applied_at) VALUES (%s, now())", (migration.id,))
    return True


def _lock(database: peewee.Database) -> None:
    """Take the migration lock for the rest of the current transaction (the transaction's first statement)."""
    if _is_cockroach(database):
        database.execute_sql("SELECT id FROM schema_lock WHERE id = 1 FOR UPDATE")
    else:
        database.execute_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))


def _is_cockroach(database: peewee.Database) -> bool:
    return isinstance(database, CockroachDatabase)
