"""Manifest files: the objects a user declares, checked and put in the order they can be created.

A file holds YAML documents (or JSON), each a ``kind:`` and the object's
fields by API name. A reference may be given by name, ``workload_definition:
web`` for ``workload_definition_id: <uuid>``: any field ``X_id`` that
references a kind may be written ``X: <name>``. A ``kind: Workload``
document is Threeport's high-level workload, expanded here into the
definitions and instances it stands for. Everything is checked against the
kinds ``/v0/kinds`` describes before anything is written, and
:func:`plan` orders the objects so that referenced ones come first (file
order otherwise), which is the order to create them in and, reversed, to
delete them in.
"""

from __future__ import annotations

import difflib
import heapq
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, TextIO

import yaml

from .client import Catalog, ClientError, Kind, UnknownKind

__all__ = ["Document", "Manifest", "ManifestError", "read_documents", "plan", "WORKLOAD"]

#: The high-level kind expanded by the CLI.
WORKLOAD = "Workload"
#: The optional parts of a Workload: key -> (definition kind, instance kind).
WORKLOAD_PARTS = {
    "aws_relational_database": ("AwsRelationalDatabaseDefinition", "AwsRelationalDatabaseInstance"),
    "aws_object_storage_bucket": ("AwsObjectStorageBucketDefinition", "AwsObjectStorageBucketInstance"),
    "domain_name": ("DomainNameDefinition", "DomainNameInstance"),
    "gateway": ("GatewayDefinition", "GatewayInstance"),
}
WORKLOAD_KEYS = ("kind", "name", "yaml_document", "yaml_document_path", "kubernetes_runtime_instance", *WORKLOAD_PARTS)


class ManifestError(ClientError):
    """Raised when a manifest file cannot be read, or declares objects that cannot be applied as written."""


@dataclass(frozen=True)
class Document:
    """One document of a file, as written."""

    body: dict[str, Any]
    #: Where it is, for messages: ``app.yaml, document 2``.
    source: str
    #: Where paths in it are relative to (the file's directory).
    base_dir: Path


@dataclass(frozen=True)
class Manifest:
    """One object a file declares, as the API takes it."""

    kind: Kind
    name: str
    #: Fields by API name (a reference given by id included).
    fields: dict[str, Any]
    #: References given by name: API field name (``X_id``) -> the referenced object's name.
    references: dict[str, str] = field(default_factory=dict)
    #: Where it comes from, for messages: ``app.yaml, document 2 (WorkloadInstance/web)``.
    source: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the object: (kind, name)."""
        return self.kind.kind, self.name

    @property
    def label(self) -> str:
        return f"{self.kind.kind}/{self.name}"

    def needs(self) -> list[tuple[str, str]]:
        """The (kind, name) of every object it references by name."""
        return [(self.kind.fields[api_name].references, name) for api_name, name in self.references.items()]


# Reading -------------------------------------------------------------------------------
def read_documents(paths: Sequence[str], *, stdin: Optional[TextIO] = None) -> list[Document]:
    """Every document of the files (``-`` is stdin), in order; ManifestError when one cannot be read."""
    documents: list[Document] = []
    for path in paths:
        if path == "-":
            text, label, base_dir = (stdin or sys.stdin).read(), "<stdin>", Path.cwd()
        else:
            try:
                text = Path(path).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ManifestError(f"cannot read {path}: {exc}") from exc
            label, base_dir = path, Path(path).resolve().parent
        documents.extend(_documents(text, label=label, base_dir=base_dir))
    return documents


def _documents(text: str, *, label: str, base_dir: Path) -> list[Document]:
    loaded = _parse(text, label=label)
    if not loaded:  # an empty file applied nothing and said nothing, as if it had worked
        raise ManifestError(f"{label}: no documents")
    documents = []
    for index, body in enumerate(loaded, start=1):
        source = f"{label}, document {index}"
        if not isinstance(body, dict):
            raise ManifestError(f"{source}: expected a mapping with 'kind' and fields, not {type(body).__name__}")
        problem = _json_problem(body)
        if problem:
            raise ManifestError(f"{source}: {problem}")
        documents.append(Document(body, source, base_dir))
    return documents


def _parse(text: str, *, label: str) -> list[Any]:
    """The documents of a YAML stream or a JSON text (an object, or a list of objects)."""
    json_error = None
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text, object_pairs_hook=_json_object)
            return data if isinstance(data, list) else [data]
        except DuplicateKey as exc:
            raise ManifestError(f"{label}: invalid JSON: {exc}") from None
        except RecursionError:
            raise ManifestError(f"{label}: nested too deeply to read") from None
        except ValueError as exc:
            json_error = exc  # YAML in flow style, perhaps
    try:
        loaded = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as exc:
        if json_error is not None:  # it looked like JSON and is neither: JSON's reason is the one to read
            raise ManifestError(f"{label}: invalid JSON: {json_error}") from exc
        raise ManifestError(f"{label}: invalid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError:
        raise ManifestError(f"{label}: nested too deeply to read") from None
    # A document that is a list holds several objects (as a JSON array would).
    return [item for d in loaded for item in (d if isinstance(d, list) else [d])]


class DuplicateKey(ValueError):
    """A mapping that gives one key twice (YAML and JSON readers would silently keep the last)."""


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise DuplicateKey(f"the key {key!r} is given twice in one object")
        mapping[key] = value
    return mapping


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives one key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"the key {key!r} is given twice",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


#: How deeply a document may nest mappings and lists (Kubernetes YAML stays far below).
MAX_DEPTH = 64


def _json_problem(value: Any, where: str = "", depth: int = 0, within: tuple[int, ...] = ()) -> Optional[str]:
    """What in ``value`` JSON cannot carry to the API (a date, bytes, a set, NaN, a loop, a key that is no text).

    ``where`` is the path to ``value`` in the document (``spec.ports[0]``), empty for the document itself.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return None
    shown = (f"'{where[:60]}…'" if len(where) > 60 else f"'{where}'") if where else "the document"
    if isinstance(value, float):
        return (
            None if math.isfinite(value) else f"{shown} is {value}, which JSON cannot carry; quote it to keep it text"
        )
    if depth >= MAX_DEPTH:
        return f"{shown} is nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, (dict, list)):
        if id(value) in within:
            return f"{shown} contains itself (a YAML alias of an enclosing node)"
        within = (*within, id(value))
        if isinstance(value, list):
            items = ((f"{where}[{i}]", item) for i, item in enumerate(value))
        else:
            for key in value:
                if not isinstance(key, str):
                    return f"{shown} has the key {key!r}, which is no text; quote it"
            items = ((f"{where}.{key}" if where else key, item) for key, item in value.items())
        return next((p for w, item in items if (p := _json_problem(item, w, depth + 1, within))), None)
    kinds = {"date": "a date", "datetime": "a timestamp", "bytes": "binary data", "set": "a set"}
    what = kinds.get(type(value).__name__, f"a {type(value).__name__}")
    return f"{shown} is {what} ({value}), which the API does not take; quote it to keep it text"


# Planning ------------------------------------------------------------------------------
def plan(documents: Iterable[Document], catalog: Catalog) -> list[Manifest]:
    """The objects the documents declare, checked, Workloads expanded, referenced objects first.

    Raises ManifestError naming the document: an unknown kind or field, a
    missing name or required field, an object declared twice, or a cycle of
    references. References to names the file does not declare are left for
    the caller to find in the control plane.
    """
    manifests: list[Manifest] = []
    seen: dict[tuple[str, str], Manifest] = {}
    for document in documents:
        for manifest in _manifests_of(document, catalog):
            if manifest.key in seen:
                raise ManifestError(
                    f"{manifest.source}: {manifest.label} is also declared in {seen[manifest.key].source}"
                )
            seen[manifest.key] = manifest
            manifests.append(manifest)
    return _dependencies_first(manifests)


def _manifests_of(document: Document, catalog: Catalog) -> list[Manifest]:
    body = dict(document.body)
    kind_name = _text(body.pop("kind", None), "kind", where=document.source)
    if kind_name.lower() == WORKLOAD.lower() and catalog.get(kind_name) is None:
        return _expand_workload(document, catalog)
    try:
        kind = catalog.lookup(kind_name)
    except UnknownKind as exc:
        raise ManifestError(f"{document.source}: {exc}") from None
    return [_manifest(kind, body, source=document.source)]


def _manifest(kind: Kind, body: dict[str, Any], *, source: str, label: Optional[str] = None) -> Manifest:
    """``body`` (fields by API name, or references by name) checked against ``kind``."""
    name = body.get("name")
    where = f"{source} ({label or (kind.kind if name is None else f'{kind.kind}/{name}')})"
    if not kind.reconciled and kind.writable:  # a record a client writes, such as an ExtensionApiRoute
        raise ManifestError(
            f"{where}: {kind.kind} records have no name to apply them by; create them with POST {kind.path}"
        )
    if not kind.reconciled:
        raise ManifestError(f"{where}: {kind.kind} objects are written by the control plane, not applied")
    name = _text(name, "name", where=where)
    fields: dict[str, Any] = {}
    references: dict[str, str] = {}
    aliases = kind.aliases
    for key, value in body.items():
        if key in aliases:
            reference = aliases[key]
            if reference.name in body:
                raise ManifestError(f"{where}: give either {key!r} or {reference.name!r}, not both")
            if value is not None and not isinstance(value, str):
                raise ManifestError(f"{where}: {key!r} must be the name of a {reference.references}")
            if value is None:
                fields[reference.name] = None
            else:
                references[reference.name] = value
        elif key in kind.fields and kind.fields[key].writable:
            fields[key] = value
        elif key in kind.fields:
            raise ManifestError(f"{where}: field {key!r} is managed by the server and cannot be set")
        else:
            raise ManifestError(f"{where}: unknown field {key!r} for {kind.kind}{_did_you_mean(key, kind)}")
    for f in kind.fields.values():
        if f.required and f.name not in fields and f.name not in references:
            given_as = f" (or {f.alias!r}: a name)" if f.alias else ""
            raise ManifestError(f"{where}: missing field {f.name!r}{given_as}")
    return Manifest(kind=kind, name=name, fields=fields, references=references, source=where)


def _text(value: Any, key: str, *, where: str) -> str:
    """``value`` of ``key``, which must be a non-blank string (a YAML ``5`` or ``yes`` is not a name)."""
    if value is None:
        raise ManifestError(f"{where}: no {key!r}")
    if not isinstance(value, str):
        raise ManifestError(f"{where}: {key!r} must be a string, not {type(value).__name__} ({value!r})")
    if not value.strip():
        raise ManifestError(f"{where}: {key!r} must not be empty")
    return value


def _did_you_mean(key: str, kind: Kind) -> str:
    names = [f.name for f in kind.fields.values() if f.writable] + list(kind.aliases)
    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dependencies_first(manifests: list[Manifest]) -> list[Manifest]:
    """Each object after those it references within the list, file order kept otherwise.

    Kahn's algorithm with the ready objects in a heap by file position: linear in the
    references, so a file of thousands of objects is planned at once.
    """
    position = {m.key: index for index, m in enumerate(manifests)}
    waiting_on = [0] * len(manifests)
    dependents: dict[int, list[int]] = {}
    for index, manifest in enumerate(manifests):
        for need in set(manifest.needs()):
            if need in position and position[need] != index:
                waiting_on[index] += 1
                dependents.setdefault(position[need], []).append(index)
            elif need == manifest.key:
                waiting_on[index] += 1  # references itself: never ready, reported as a cycle
    ready = [index for index, count in enumerate(waiting_on) if count == 0]
    heapq.heapify(ready)
    ordered: list[Manifest] = []
    while ready:
        index = heapq.heappop(ready)
        ordered.append(manifests[index])
        for dependent in dependents.get(index, ()):
            waiting_on[dependent] -= 1
            if waiting_on[dependent] == 0:
                heapq.heappush(ready, dependent)
    if len(ordered) < len(manifests):
        placed = {id(m) for m in ordered}
        cycle = "; ".join(m.source for m in manifests if id(m) not in placed)
        raise ManifestError(f"these documents reference each other in a cycle: {cycle}")
    return ordered


# The Workload document -----------------------------------------------------------------
def _expand_workload(document: Document, catalog: Catalog) -> list[Manifest]:
    """A ``kind: Workload`` document as its WorkloadDefinition, WorkloadInstance and their parts."""
    body = document.body
    name = body.get("name")
    where = f"{document.source} ({WORKLOAD if name is None else f'{WORKLOAD}/{name}'})"
    unknown = [key for key in body if key not in WORKLOAD_KEYS]
    if unknown:
        raise ManifestError(
            f"{where}: unknown key {unknown[0]!r} in a Workload (known: {', '.join(WORKLOAD_KEYS[1:])})"
        )
    name = _text(name, "name", where=where)
    definition_kind, instance_kind = _kind(catalog, "WorkloadDefinition"), _kind(catalog, "WorkloadInstance")
    instance = {"name": name, _alias_of(instance_kind, definition_kind): name}
    if body.get("kubernetes_runtime_instance") is not None:
        instance[_alias_of(instance_kind, _kind(catalog, "KubernetesRuntimeInstance"))] = body[
            "kubernetes_runtime_instance"
        ]
    label = f"{WORKLOAD}/{name}"
    manifests = [
        _manifest(
            definition_kind,
            {"name": name, "yaml_document": _yaml_document(document, where)},
            source=document.source,
            label=label,
        ),
        _manifest(instance_kind, instance, source=document.source, label=label),
    ]
    for key, (part_definition, part_instance) in WORKLOAD_PARTS.items():
        part = body.get(key)
        if part is None:
            continue
        if not isinstance(part, dict):
            raise ManifestError(f"{where}: {key!r} must be a mapping of the {part_definition}'s fields")
        part = dict(part)
        if key == "gateway" and isinstance(body.get("domain_name"), dict):
            gateway_kind = _kind(catalog, part_definition)
            alias = _alias_of(gateway_kind, _kind(catalog, WORKLOAD_PARTS["domain_name"][0]))
            if alias not in part and f"{alias}_id" not in part:
                part[alias] = body["domain_name"].get("name")
        part_label = f"{label} {key}"
        definition = _manifest(_kind(catalog, part_definition), part, source=document.source, label=part_label)
        part_kind = _kind(catalog, part_instance)
        part_fields = {
            "name": definition.name,
            _alias_of(part_kind, definition.kind): definition.name,
            _alias_of(part_kind, instance_kind): name,
        }
        manifests += [definition, _manifest(part_kind, part_fields, source=document.source, label=part_label)]
    return manifests


def _yaml_document(document: Document, where: str) -> str:
    """The workload's Kubernetes YAML: inline, or read from a path relative to the manifest."""
    inline, path = document.body.get("yaml_document"), document.body.get("yaml_document_path")
    if (inline is None) == (path is None):
        raise ManifestError(f"{where}: give one of 'yaml_document' and 'yaml_document_path'")
    if inline is not None:
        if not isinstance(inline, str):
            raise ManifestError(f"{where}: 'yaml_document' must be text")
        return inline
    if not isinstance(path, str) or not path.strip():
        raise ManifestError(f"{where}: 'yaml_document_path' must be a path relative to the manifest")
    # Only files beside the manifest or below it: applying a manifest from elsewhere must not
    # upload ~/.ssh/id_rsa or /etc/shadow to the API (kustomize's load restriction, likewise).
    base = document.base_dir.resolve()
    full = (base / path).resolve()
    if Path(path).is_absolute() or not full.is_relative_to(base):
        raise ManifestError(
            f"{where}: yaml_document_path {path!r} is outside the manifest's directory {str(base)!r};"
            " give a path relative to the manifest, in its directory or below"
        )
    try:
        return full.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: cannot read yaml_document_path {str(path)!r}: {exc}") from exc


def _kind(catalog: Catalog, name: str) -> Kind:
    try:
        return catalog.lookup(name)
    except UnknownKind as exc:
        raise ManifestError(f"the API does not serve what a Workload expands into: {exc}") from None


def _alias_of(kind: Kind, target: Kind) -> str:
    """The name under which ``kind`` references ``target`` by name (``workload_instance``)."""
    for f in kind.fields.values():
        if f.references == target.kind and f.alias:
            return f.alias
    raise ManifestError(f"{kind.kind} has no reference to {target.kind}: the API does not match this client")
