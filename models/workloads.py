"""Workloads: a user's multi-document Kubernetes YAML, its parsed documents, and where it runs.

A :class:`WorkloadDefinition` is reconciled on the ``workloads`` queue: its
reconciler parses ``yaml_document`` and records one
:class:`WorkloadResourceDefinition` per document through
:func:`record_resources`. Rows are keyed by (definition, name), where the
reconciler names each document by its identity (e.g. ``Deployment/web``),
so recording the same YAML twice changes nothing, and recording an edited
YAML updates, adds and removes rows to match it. Resource rows go with their
definition (``ON DELETE CASCADE``).

A :class:`WorkloadInstance` deploys a definition to a Kubernetes runtime
(the default runtime when it names none); its reconciler records the
resources it applied (:class:`WorkloadResourceInstance`) and what the
cluster reported about them (:class:`WorkloadEvent`), both children that go
with it.
"""

from __future__ import annotations

import uuid
from typing import Sequence

import peewee
from playhouse.postgres_ext import BinaryJSONField

from .base import ReconciledModel, RecordModel, UTCDateTimeField, utcnow
from .errors import InvalidObject, NotFound, sqlstate
from .kubernetes import KubernetesRuntimeInstance
from .registry import register
from .transactions import transactional

__all__ = [
    "WorkloadDefinition",
    "WorkloadResourceDefinition",
    "WorkloadInstance",
    "WorkloadResourceInstance",
    "WorkloadEvent",
    "record_resources",
]


@register
class WorkloadDefinition(ReconciledModel):
    """A workload as Kubernetes YAML (one or more documents)."""

    kind = "WorkloadDefinition"
    plural = "workload-definitions"
    queue = "workloads"
    summary = "A workload as Kubernetes YAML (one or more documents)."

    yaml_document = peewee.TextField(help_text="The workload's Kubernetes manifests, as multi-document YAML.")

    class Meta:
        table_name = "workload_definitions"


@register
class WorkloadResourceDefinition(RecordModel):
    """One document of a workload definition's YAML, as JSON (a child row its reconciler writes)."""

    kind = "WorkloadResourceDefinition"
    plural = "workload-resource-definitions"
    summary = "One document of a WorkloadDefinition's YAML, as parsed by its reconciler (read-only)."

    workload_definition = peewee.ForeignKeyField(
        WorkloadDefinition, backref="resource_definitions", on_delete="CASCADE", help_text="The definition."
    )
    #: Unique within the definition; the reconciler's name for the document.
    name = peewee.TextField(help_text="The document's identity: '[namespace/]Kind/name'.")
    #: The document's place in the YAML (apply order).
    position = peewee.IntegerField(help_text="The document's place in the YAML (apply order).")
    json_definition = BinaryJSONField(help_text="The document.")

    class Meta:
        table_name = "workload_resource_definitions"
        indexes = ((("workload_definition", "name"), True),)


@register
class WorkloadInstance(ReconciledModel):
    """A workload definition deployed to a runtime."""

    kind = "WorkloadInstance"
    plural = "workload-instances"
    queue = "workloads"
    summary = "A WorkloadDefinition deployed to a Kubernetes runtime."
    depends_on = ("workload_definition", "kubernetes_runtime_instance")

    workload_definition = peewee.ForeignKeyField(WorkloadDefinition, backref="+", help_text="What to deploy.")
    kubernetes_runtime_instance = peewee.ForeignKeyField(
        KubernetesRuntimeInstance, backref="+", null=True, help_text="Where; the default runtime when not given."
    )

    class Meta:
        table_name = "workload_instances"


@register
class WorkloadResourceInstance(RecordModel):
    """One Kubernetes object a workload instance applied (a child row its reconciler writes)."""

    kind = "WorkloadResourceInstance"
    plural = "workload-resource-instances"
    summary = "One Kubernetes object a WorkloadInstance applied (read-only)."

    workload_instance = peewee.ForeignKeyField(
        WorkloadInstance, backref="resource_instances", on_delete="CASCADE", help_text="The instance."
    )
    name = peewee.TextField(help_text="The object's identity: 'namespace/Kind/name'.")
    position = peewee.IntegerField(help_text="Apply order.")
    json_definition = BinaryJSONField(help_text="The object as applied.")

    class Meta:
        table_name = "workload_resource_instances"
        indexes = ((("workload_instance", "name"), True),)


@register
class WorkloadEvent(RecordModel):
    """What the cluster reported about one of a workload instance's objects."""

    kind = "WorkloadEvent"
    plural = "workload-events"
    summary = "A Kubernetes event about a WorkloadInstance's objects (read-only)."

    workload_instance = peewee.ForeignKeyField(
        WorkloadInstance, backref="events", on_delete="CASCADE", help_text="The instance."
    )
    type = peewee.TextField(help_text="'Normal' or 'Warning'.")
    reason = peewee.TextField(help_text="A short CamelCase reason, e.g. 'BackOff'.")
    message = peewee.TextField(help_text="What happened.")
    involved_object = peewee.TextField(help_text="The object it is about: 'namespace/Kind/name'.")
    last_seen = UTCDateTimeField(default=utcnow, help_text="When it was last reported.")

    class Meta:
        table_name = "workload_events"


@transactional
def record_resources(workload_definition_id: uuid.UUID | str, documents: Sequence[tuple[str, dict]]) -> bool:
    """Make the definition's resource rows exactly ``documents`` (``(name, json)`` in YAML order): whether any changed.

    Two statements: an upsert of every document (rows already so are left
    alone), then a delete of the rows no document names any more. Raises
    NotFound when the definition is gone (deleted meanwhile: the upsert
    breaks the foreign key), and InvalidObject when two documents share a name.
    """
    names = [name for name, _ in documents]
    if len(set(names)) != len(names):
        raise InvalidObject(f"resource names must be unique within a workload definition: {names}")
    table = WorkloadResourceDefinition
    if documents:
        rows = [
            {
                table.workload_definition: workload_definition_id,
                table.name: name,
                table.position: i,
                table.json_definition: doc,
            }
            for i, (name, doc) in enumerate(documents)
        ]
        stored = peewee.Tuple(table.position, table.json_definition)
        upsert = (
            table.insert_many(rows)
            .on_conflict(
                conflict_target=[table.workload_definition, table.name],
                preserve=[table.position, table.json_definition],
                where=stored != peewee.Tuple(peewee.EXCLUDED.position, peewee.EXCLUDED.json_definition),
            )
            .returning(table.id)
        )
        try:
            written = len(list(upsert.execute()))
        except peewee.IntegrityError as exc:
            if sqlstate(exc) == "23503":
                raise NotFound(f"no WorkloadDefinition with id {str(workload_definition_id)!r}") from exc
            raise
    else:
        written = 0
    stale = table.delete().where((table.workload_definition == workload_definition_id) & table.name.not_in(names))
    return written + stale.execute() > 0
