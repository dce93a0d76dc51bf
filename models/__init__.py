"""Peewee models, database binding, migrations, the outbox and the store functions.

Importing the package registers every built-in kind in :mod:`models.registry`.
Writes go through :mod:`models.store`; each is one retried transaction.
"""

from . import registry, store
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
from .migrations import migrate
from .outbox import Outbox
from .transactions import run_in_transaction, transactional
from .workloads import WorkloadDefinition, WorkloadResourceDefinition

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
    "Outbox",
    "registry",
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
