"""The WorkloadDefinition reconciler: parse the user's YAML and record one row per document.

Each document must be a mapping with ``apiVersion``, ``kind`` and
``metadata.name``; it is named ``<kind>/<name>`` (with the namespace when
one is given) so recording the same YAML again changes nothing. Bad YAML is
a :class:`~tasks.errors.PermanentError`: retrying the same text cannot help.
When the recorded documents change, the definition's instances are asked to
reconcile again, so they apply the new documents.
"""

from __future__ import annotations

from typing import Any

import yaml

from models import store
from models.errors import InvalidObject
from models.workloads import WorkloadDefinition, WorkloadInstance, record_resources

from .errors import PermanentError
from .reconcilers import Reconciler, register

__all__ = ["parse_documents", "reconcile_workload_definition"]

#: libyaml's safe loader when PyYAML was built with it (several times faster), the pure-Python one otherwise.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_documents(text: str) -> list[tuple[str, dict]]:
    """The YAML's documents as ``(name, document)`` in order; PermanentError when one is invalid."""
    try:
        loaded = list(yaml.load_all(text, Loader=_SafeLoader))
    except yaml.YAMLError as exc:
        raise PermanentError(f"invalid YAML: {exc}") from exc
    documents = []
    for index, document in enumerate(d for d in loaded if d is not None):
        documents.append((_name_of(index, document), document))
    if not documents:
        raise PermanentError("the YAML holds no document")
    return documents


def _name_of(index: int, document: Any) -> str:
    if not isinstance(document, dict):
        raise PermanentError(f"document {index} is not a mapping")
    metadata = document.get("metadata")
    missing = [key for key in ("apiVersion", "kind") if not document.get(key)]
    if not isinstance(metadata, dict) or not metadata.get("name"):
        missing.append("metadata.name")
    if missing:
        raise PermanentError(f"document {index} has no {', '.join(missing)}")
    namespace = metadata.get("namespace")
    name = f"{document['kind']}/{metadata['name']}"
    return f"{namespace}/{name}" if namespace else name


def reconcile_workload_definition(definition: WorkloadDefinition) -> None:
    """Record the definition's documents (idempotent), then have its instances apply them."""
    documents = parse_documents(definition.yaml_document)
    try:
        changed = record_resources(definition.id, documents)
    except InvalidObject as exc:  # two documents with one name
        raise PermanentError(str(exc)) from exc
    if changed:
        instances = WorkloadInstance.select(WorkloadInstance.id).where(
            WorkloadInstance.workload_definition == definition.id
        )
        store.request_reconcile(WorkloadInstance, [row.id for row in instances])


#: Resource rows go with the definition (ON DELETE CASCADE): nothing else to remove.
register(WorkloadDefinition.kind, Reconciler(reconcile=reconcile_workload_definition))
