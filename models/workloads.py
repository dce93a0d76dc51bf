"""Workload definitions: a user's multi-document Kubernetes YAML, and its parsed documents.

A :class:`WorkloadDefinition` is reconciled on the ``workloads`` queue: its
reconciler parses ``yaml_document`` and records one
:class:`WorkloadResourceDefinition` per document through
:func:`record_resources`. Rows are keyed by (definition, name), where the
reconciler names each document by its identity (e.g. ``Deployment/web``),
so recording the same YAML twice changes nothing, and recording an edited
YAML updates, adds and removes rows to match it. Resource rows go with their
definition (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import uuid
from typing import Sequence

import peewee
from playhouse.postgres_ext import BinaryJSONField

from .base import BaseModel, ReconciledModel, UTCDateTimeField, utcnow
from .errors import InvalidObject, NotFound
from .registry import register
from .transactions import transactional

__all__ = ["WorkloadDefinition", "WorkloadResourceDefinition", "record_resources"]


@register
class WorkloadDefinition(ReconciledModel):
    """A workload as Kubernetes YAML (one or more documents)."""

    kind = "WorkloadDefinition"
    plural = "workload-definitions"
    queue = "workloads"
    spec_fields = ("yaml_document",)

    yaml_document = peewee.TextField()

    class Meta:
        table_name = "workload_definitions"


class WorkloadResourceDefinition(BaseModel):
    """One document of a workload definition's YAML, as JSON (a plain child row, not reconciled)."""

    id = peewee.UUIDField(primary_key=True, default=uuid.uuid4)
    workload_definition = peewee.ForeignKeyField(
        WorkloadDefinition,
        backref="resource_definitions",
        column_name="workload_definition_id",
        on_delete="CASCADE",
    )
    #: Unique within the definition; the reconciler's name for the document.
    name = peewee.TextField()
    #: The document's place in the YAML (apply order).
    position = peewee.IntegerField()
    json_definition = BinaryJSONField()
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "workload_resource_definitions"
        indexes = ((("workload_definition", "name"), True),)


@transactional
def record_resources(
    workload_definition_id: uuid.UUID | str, documents: Sequence[tuple[str, dict]]
) -> list[WorkloadResourceDefinition]:
    """Make the definition's resource rows exactly ``documents`` (``(name, json)`` in YAML order).

    Raises NotFound when the definition is gone (deleted meanwhile), and
    InvalidObject when two documents share a name.
    """
    names = [name for name, _ in documents]
    if len(set(names)) != len(names):
        raise InvalidObject(f"resource names must be unique within a workload definition: {names}")
    definition = WorkloadDefinition.get_or_none(WorkloadDefinition.id == workload_definition_id)
    if definition is None:
        raise NotFound(f"no WorkloadDefinition with id {str(workload_definition_id)!r}")
    table = WorkloadResourceDefinition
    table.delete().where((table.workload_definition == definition.id) & table.name.not_in(names)).execute()
    if documents:
        rows = [
            {table.workload_definition: definition.id, table.name: name, table.position: i, table.json_definition: doc}
            for i, (name, doc) in enumerate(documents)
        ]
        table.insert_many(rows).on_conflict(
            conflict_target=[table.workload_definition, table.name],
            preserve=[table.position, table.json_definition],
        ).execute()
    return list(table.select().where(table.workload_definition == definition.id).order_by(table.position))
