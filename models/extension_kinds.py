"""Extension kinds: object kinds an extension registers with the running control plane.

An :class:`Extension` row registers one version of one extension's API: its
domain (``acmecorp.com``), its version (``v1``), the queue its controller
consumes and its kinds, each with a JSON Schema. From that row any process
with the database builds the kinds' Peewee models at runtime
(:class:`ExtensionObject` subclasses, :func:`build_models`); the API serves
them at ``/<domain>/<version>/<plural>`` with the same generic resources and
store as the core kinds, so they get the lifecycle fields, ETags,
pagination, filters and outbox rows for free.

Everything of an extension is namespaced by its domain and version, so two
extensions with the same kind name never meet: the kind's qualified name
(``acmecorp.com/v1/FancyWorkload``) is what messages, lock keys, events and
outbox rows carry; its table is ``ext_<domain>_<version>_<plural>_<digest>``;
its queue is ``ext.<domain>`` (or under it).

Each top-level property of a kind's schema is a column: strings, integers,
numbers and booleans as SQL scalars (so lists filter on them), anything
else as JSONB. The whole object is validated by the schema on every write.
A registered version evolves compatibly only: kinds and optional properties
may be added, required properties may become optional, descriptions and
constraints may change; removing or retyping anything needs a new version.

:class:`ExtensionCatalog` keeps one process's models current: it compares a
fingerprint of the table (ids and resource versions) at most every few
seconds, at once when asked for a kind it does not know, and rebuilds only
the extensions that changed.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Optional

import jsonschema
import peewee
import referencing.exceptions
from playhouse.migrate import PostgresqlMigrator

from . import registry
from .base import LIFECYCLE_FIELDS, ReconciledModel, RecordModel, UTCDateTimeField, utcnow
from .errors import Conflict, InvalidObject, NotFound, PreconditionFailed, StoreError
from .events import Event
from .extensions import ExtensionApiRoute, check_domain
from .json_schemas import Validator, keywords, unsupported_patterns
from .outbox import Outbox
from .schema import JSONDocument, fields_of
from .store import create_record
from .transactions import transactional
from .validation import checked_fields

__all__ = [
    "Extension",
    "ExtensionObject",
    "ExtensionCatalog",
    "catalog",
    "build_models",
    "register_extension",
    "update_extension",
    "unregister_extension",
    "served_prefixes",
    "default_plural",
    "EXTENSION_ACTOR",
    "REFRESH_SECONDS",
]

logger = logging.getLogger(__name__)

#: The actor an extension controller declares (its queue tells extensions apart).
EXTENSION_ACTOR = "reconcile_extension"
#: Longest time a process serves its extension kinds without checking the table.
REFRESH_SECONDS = 2.0

_VERSION = re.compile(r"v[1-9][0-9]*(?:(?:alpha|beta)[1-9][0-9]*)?")
_KIND = re.compile(r"[A-Z][A-Za-z0-9]{0,62}")
_PLURAL = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PROPERTY = re.compile(r"[a-z][a-z0-9_]{0,62}")
#: A queue name the broker takes (workers.naming.validate_queue_name's rule).
_QUEUE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_-]*(?:\.[a-zA-Z0-9_-]+)*")
#: Names a property cannot take: the lifecycle's, and what every object shows.
_RESERVED = frozenset(LIFECYCLE_FIELDS) | {"kind", "id", "created_at", "name"}
#: Most properties a kind may have (PostgreSQL holds 1,600 columns a table, the lifecycle's among them).
MAX_PROPERTIES = 1000
#: What each kind's model class is given besides its columns (see :func:`_model`): no property may hide it.
_MODEL_ATTRIBUTES = frozenset(
    {"kind", "plural", "summary", "queue", "domain", "version", "short_kind", "object_schema", "reconcilable"}
)
_COLUMN_TYPES: dict[str, Callable[..., peewee.Field]] = {
    "string": peewee.TextField,
    "integer": peewee.BigIntegerField,
    "number": peewee.DoubleField,
    "boolean": peewee.BooleanField,
}
_KINDS_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "maxItems": 64,
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["kind", "schema"],
        "properties": {
            "kind": {"type": "string", "description": "The kind's name, e.g. 'FancyWorkload'."},
            "plural": {"type": "string", "description": "Its URL segment (default: 'fancy-workloads')."},
            "summary": {"type": "string", "maxLength": 500},
            "reconciled": {
                "type": "boolean",
                "default": True,
                "description": "Whether the extension's controller reconciles its objects (else plain records).",
            },
            "schema": {"type": "object", "description": "The JSON Schema (2020-12) of its objects' fields."},
        },
    },
}


@registry.register
class Extension(RecordModel):
    kind = "Extension"
    plural = "extensions"
    summary = "One version of an extension's API: its domain, kinds (with JSON Schemas) and queue."
    client_writable = True
    create_fields = ("domain", "version", "queue", "kinds", "description")

    domain = peewee.TextField(help_text="The extension's domain, e.g. 'acmecorp.com'; its kinds live under it.")
    version = peewee.TextField(help_text="The API version, e.g. 'v1' or 'v2beta1'.")
    queue = peewee.TextField(null=True, help_text="The queue its controller consumes (default 'ext.<domain>').")
    kinds = JSONDocument(_KINDS_SCHEMA, help_text="The kinds it serves.")
    description = peewee.TextField(default="", help_text="What the extension is.")
    updated_at = UTCDateTimeField(default=utcnow)
    #: Bumped on every change; the ETag.
    resource_version = peewee.BigIntegerField(default=1)

    class Meta:
        table_name = "extensions"
        indexes = ((("domain", "version"), True),)

    @property
    def prefix(self) -> str:
        return f"/{self.domain}/{self.version}/"

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        check_domain(values["domain"], field="domain")
        version = values["version"]
        if not _VERSION.fullmatch(version):
            raise InvalidObject(f"field 'version' must look like 'v1', 'v2beta1' or 'v1alpha2', not {version!r}")
        queue = values.get("queue") or default_queue(values["domain"])
        namespace = default_queue(values["domain"])
        if queue != namespace and not queue.startswith(namespace + "."):
            raise InvalidObject(f"field 'queue' must be {namespace!r} or under it ({namespace}.<name>)")
        if not _QUEUE.fullmatch(queue):
            raise InvalidObject(
                f"field 'queue': {queue!r} is not a queue name (letters, digits, '_' and '-' between single dots)"
            )
        values["queue"] = queue
        values["kinds"] = [  # stored with their defaults filled in, as clients then read them
            {"kind": spec.kind, "plural": spec.plural, "summary": spec.summary, "reconciled": spec.reconciled}
            | {"schema": spec.schema}
            for spec in _checked_kinds(values["kinds"])
        ]
        for spec in values["kinds"]:
            _check_registrable(spec["kind"], spec["schema"])


class ExtensionObject(ReconciledModel):
    """An object of an extension kind (abstract: :func:`build_models` derives one class per kind)."""

    #: The extension's domain and version, and the kind's name within them.
    domain: ClassVar[str]
    version: ClassVar[str]
    short_kind: ClassVar[str]
    #: The JSON Schema every object is checked against (its top-level properties are the columns).
    object_schema: ClassVar[dict[str, Any]]
    actor = EXTENSION_ACTOR

    @classmethod
    def collection_path(cls) -> str:
        return f"/{cls.domain}/{cls.version}/{cls.plural}"

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        document = {name: value for name, value in values.items() if name != "name" and value is not None}
        errors = Validator(cls.object_schema).iter_errors(document)
        try:
            error = jsonschema.exceptions.best_match(errors)
        except referencing.exceptions.Unresolvable as exc:  # registered before references were checked
            raise InvalidObject(f"the kind's schema cannot be used: a $ref does not resolve ({exc})") from None
        if error is not None:
            path = list(error.absolute_path)
            where = f"field {path[0]!r}" + "".join(f"[{part!r}]" for part in path[1:]) if path else "object"
            raise InvalidObject(f"{where}: {error.message}")


def default_queue(domain: str) -> str:
    """The queue of an extension's controller unless it names one under it."""
    return f"ext.{domain}"


def table_name(domain: str, version: str, plural: str) -> str:
    """The table of one extension kind: readable, at most 48 characters, unique by its digest."""
    digest = hashlib.sha1(f"{domain}/{version}/{plural}".encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "_", f"{domain}_{version}_{plural}")[:35].strip("_")
    return f"ext_{slug}_{digest}"


def qualified_kind(domain: str, version: str, kind: str) -> str:
    return f"{domain}/{version}/{kind}"


def build_models(extension: Extension) -> list[type[ExtensionObject]]:
    """The models of ``extension``'s kinds (classes only: no table is touched)."""
    return [_model(extension, spec) for spec in _checked_kinds(extension.kinds)]


# Registration ---------------------------------------------------------------------


@transactional
def register_extension(fields: dict[str, Any]) -> Extension:
    """Register a new extension version and create its kinds' tables, in one transaction.

    Raises InvalidObject (a bad domain, version, queue or schema), or
    Conflict (the version is registered already, or its paths are routed
    to an extension API server).
    """
    domain, version = fields.get("domain"), fields.get("version")
    taken = None
    if isinstance(domain, str) and isinstance(version, str):  # otherwise create_record says what is wrong
        same = (Extension.domain == domain) & (Extension.version == version)
        taken = Extension.select(Extension.id).where(same).first()
    if taken is not None:
        raise Conflict(f"{domain}/{version} is registered already (Extension {taken.id}): replace it with a PUT")
    extension = create_record(Extension, fields)
    _must_not_be_proxied(extension)
    for model in build_models(extension):
        _create_table(model)
    return extension


@transactional
def update_extension(extension_id: str, fields: dict[str, Any], *, if_match: Optional[int] = None) -> Extension:
    """Replace an extension version's registration with a compatible one; add the tables and columns it needs.

    Raises NotFound, PreconditionFailed, InvalidObject (an incompatible
    change: that needs a new version), or Conflict.
    """
    extension = _load_for_update(extension_id)
    if if_match is not None and str(if_match) != str(extension.resource_version):
        raise PreconditionFailed(f"Extension {extension.id} is at resource_version {extension.resource_version}")
    values = checked_fields(Extension, fields, creating=True)
    Extension.check(values)
    for name in ("domain", "version", "queue"):
        if values[name] != getattr(extension, name):
            raise InvalidObject(f"field {name!r} cannot change: register a new version instead")
    old = {model.short_kind: model for model in build_models(extension)}
    proposed = Extension(**{**extension.__data__, **values})
    new = {model.short_kind: model for model in build_models(proposed)}
    for name, model in old.items():
        if name not in new:
            raise InvalidObject(
                f"kind {name!r} cannot be removed from {extension.domain}/{extension.version}: "
                "register a new version instead"
            )
        _evolve(model, new[name])
    for name, model in new.items():
        if name not in old:
            _create_table(model)
    changed = {**values, "updated_at": utcnow(), "resource_version": extension.resource_version + 1}
    Extension.update(changed).where(Extension.id == extension.id).execute()
    for name, value in changed.items():
        setattr(extension, name, value)
    return extension


@transactional
def unregister_extension(extension_id: str, *, force: bool = False) -> Extension:
    """Remove an extension version: refused (Conflict) while its kinds have objects, unless ``force``.

    ``force`` drops the kinds' tables with every object in them, their
    events and their outbox rows. Raises NotFound.
    """
    extension = _load_for_update(extension_id)
    models = build_models(extension)
    if not force:
        counts = [(model.short_kind, model.select().count()) for model in models]
        held = [f"{count} {kind}" for kind, count in counts if count]
        if held:
            raise Conflict(
                f"{extension.domain}/{extension.version} still has objects ({', '.join(held)}): "
                "delete them first, or unregister with force"
            )
    kinds = [model.kind for model in models]
    if kinds:
        Event.delete().where(Event.object_kind.in_(kinds)).execute()
        Outbox.delete().where(Outbox.kind.in_(kinds)).execute()
    for model in models:
        model._meta.database.execute_sql(f'DROP TABLE IF EXISTS "{model._meta.table_name}"')
    extension.delete_instance()
    return extension


# The catalog of one process --------------------------------------------------------


class ExtensionCatalog:
    """The extension kinds one process serves, rebuilt when the ``extensions`` table changes."""

    def __init__(self, *, refresh_seconds: float = REFRESH_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._fingerprint: Optional[str] = None
        self._versions: dict[Any, tuple[int, list[type[ExtensionObject]]]] = {}
        self._by_path: dict[tuple[str, str, str], type[ExtensionObject]] = {}
        self._checked_at = float("-inf")

    def serving(
        self, domain: str, version: str, plural: str, *, force_on_miss: bool = True
    ) -> Optional[type[ExtensionObject]]:
        """The model served at ``/<domain>/<version>/<plural>``, or None.

        A kind not known yet makes the table be checked at once (unless
        ``force_on_miss`` is false): it may have been registered a moment ago.
        """
        key = (domain, version, plural)
        checked = self.refresh()
        model = self._by_path.get(key)
        if model is None and force_on_miss and not checked:
            self.refresh(force=True)
            model = self._by_path.get(key)
        return model

    def models(self) -> list[type[ExtensionObject]]:
        """Every extension kind: refreshed when due, else (the database unreachable) as last known."""
        try:
            self.refresh()
        except StoreError:
            logger.warning("Could not refresh the extension kinds; using those last known.", exc_info=True)
        return list(self._by_path.values())

    def refresh(self, *, force: bool = False) -> bool:
        """Check the table when due (or ``force``); whether it was checked now."""
        with self._lock:
            now = self._clock()
            if not force and now - self._checked_at < self.refresh_seconds:
                return False
            fingerprint = _fingerprint()
            if fingerprint != self._fingerprint:
                self._rebuild()
                self._fingerprint = fingerprint
            self._checked_at = now
            return True

    def _rebuild(self) -> None:
        versions = {}
        for extension in _all_extensions():
            known = self._versions.get(extension.id)
            if known is not None and known[0] == extension.resource_version:
                versions[extension.id] = known  # unchanged: the same classes
            else:
                versions[extension.id] = (extension.resource_version, build_models(extension))
        models = [model for _, built in versions.values() for model in built]
        self._versions = versions
        self._by_path = {(m.domain, m.version, m.plural): m for m in models}
        registry.set_extension_kinds(models)
        fields_of.cache_clear()


#: This process's catalog.
catalog = ExtensionCatalog()


# Helpers --------------------------------------------------------------------------


@dataclass(frozen=True)
class _KindSpec:
    kind: str
    plural: str
    summary: str
    reconciled: bool
    schema: dict[str, Any]


def _load_for_update(extension_id: str) -> Extension:
    try:
        key = uuid.UUID(str(extension_id))
    except ValueError:
        key = None
    extension = Extension.select().where(Extension.id == key).for_update().first() if key else None
    if extension is None:
        raise NotFound(f"no Extension with id {str(extension_id)!r}")
    return extension


@transactional
def _all_extensions() -> list[Extension]:
    return list(Extension.select().order_by(Extension.created_at, Extension.id))


@transactional
def _fingerprint() -> str:
    cursor = Extension._meta.database.execute_sql(
        "SELECT count(*), coalesce(md5(string_agg(concat_ws(' ', id, resource_version), ',' ORDER BY id)), '') "
        "FROM extensions"
    )
    count, digest = cursor.fetchone()
    return f"{count}:{digest}"


def _checked_kinds(kinds: Iterable[dict[str, Any]]) -> list[_KindSpec]:
    specs, seen = [], set()
    for item in kinds:
        kind = item["kind"]
        if not _KIND.fullmatch(kind):
            raise InvalidObject(
                f"kind {kind!r}: a kind is a CamelCase name of letters and digits, such as 'FancyWorkload'"
            )
        plural = item.get("plural") or default_plural(kind)
        if not _PLURAL.fullmatch(plural):
            raise InvalidObject(f"kind {kind!r}: plural {plural!r} must be lower-case letters, digits and '-'")
        for name in (kind, plural):
            if name in seen:
                raise InvalidObject(f"kind {kind!r}: {name!r} is used twice in this extension")
            seen.add(name)
        schema = item["schema"]
        _check_object_schema(kind, schema)
        specs.append(_KindSpec(kind, plural, item.get("summary") or "", item.get("reconciled", True), schema))
    return specs


def _check_object_schema(kind: str, schema: dict[str, Any]) -> None:
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidObject(f"kind {kind!r}: not a valid JSON Schema: {exc.message}") from None
    if schema.get("type") != "object" or not isinstance(schema.get("properties", {}), dict):
        raise InvalidObject(f"kind {kind!r}: the schema must be of type 'object' with 'properties'")
    properties = schema.get("properties", {})
    for name in properties:
        if not _PROPERTY.fullmatch(name):
            raise InvalidObject(f"kind {kind!r}: property {name!r} must be lower_snake_case (letters, digits, '_')")
        if name in _RESERVED:
            raise InvalidObject(f"kind {kind!r}: property {name!r} is a field every object has already")
    unknown = set(schema.get("required", ())) - set(properties)
    if unknown:
        raise InvalidObject(f"kind {kind!r}: required {sorted(unknown)} are not among its properties")


def _check_registrable(kind: str, schema: dict[str, Any]) -> None:
    """What a kind must satisfy to be registered, beyond what a stored one is read with.

    A property must not hide an attribute of its model class (``select``,
    ``index``, ``plural``: the model would break), a schema has no ``$ref``
    (each property's schema also checks its column alone, where a reference
    would point nowhere, and is shown in the OpenAPI document), and each
    ``default`` must be valid for its property, and every ``pattern`` must
    run in linear time (:mod:`models.json_schemas`); all are refused here
    rather than by a 500 (or a stalled API) on the kind's first object.
    Registrations stored before these checks still load (:func:`build_models`).
    """
    properties = schema.get("properties", {})
    if len(properties) > MAX_PROPERTIES:
        raise InvalidObject(f"kind {kind!r}: at most {MAX_PROPERTIES} properties (it has {len(properties)})")
    for name in properties:
        if name in _MODEL_ATTRIBUTES or hasattr(ExtensionObject, name):
            raise InvalidObject(f"kind {kind!r}: property {name!r} is a name the kind's objects use already")
    problem = next(unsupported_patterns(schema), None)
    if problem is not None:
        raise InvalidObject(f"kind {kind!r}: {problem}")
    ref = next((v for k, v in keywords(schema) if k in ("$ref", "$dynamicRef") and isinstance(v, str)), None)
    if ref is not None:
        raise InvalidObject(f"kind {kind!r}: $ref {ref!r}: references are not followed; write the schema in place")
    for name, property_schema in properties.items():
        if isinstance(property_schema, dict) and "default" in property_schema:
            error = jsonschema.exceptions.best_match(Validator(property_schema).iter_errors(property_schema["default"]))
            if error is not None:
                raise InvalidObject(f"kind {kind!r}: the default of property {name!r} is not valid: {error.message}")
            default = property_schema["default"]
            if property_schema.get("type") == "integer" and not -(2**63) <= default < 2**63:
                raise InvalidObject(f"kind {kind!r}: the default of property {name!r} does not fit in 64 bits")


def default_plural(kind: str) -> str:
    """A kind's URL segment unless it names one: ``FancyWorkload`` → ``fancy-workloads``."""
    words = re.sub(r"(?<!^)(?=[A-Z])", "-", kind).lower()
    return words + ("es" if words.endswith(("s", "x", "ch", "sh")) else "s")


def _model(extension: Extension, spec: _KindSpec) -> type[ExtensionObject]:
    required = set(spec.schema.get("required", ()))
    attributes: dict[str, Any] = {
        "__module__": __name__,
        "kind": qualified_kind(extension.domain, extension.version, spec.kind),
        "plural": spec.plural,
        "summary": spec.summary or f"A {spec.kind} of the {extension.domain} extension.",
        "queue": extension.queue,
        "domain": extension.domain,
        "version": extension.version,
        "short_kind": spec.kind,
        "object_schema": spec.schema,
        "reconcilable": spec.reconciled,
        "Meta": type("Meta", (), {"table_name": table_name(extension.domain, extension.version, spec.plural)}),
    }
    for name, schema in spec.schema.get("properties", {}).items():
        attributes[name] = _column(schema if isinstance(schema, dict) else {}, required=name in required)
    model = type(f"{spec.kind}_{extension.version}_{_slug(extension.domain)}", (ExtensionObject,), attributes)
    model.spec_fields = tuple(spec.schema.get("properties", {}))
    return model


def _column(schema: dict[str, Any], *, required: bool) -> peewee.Field:
    type_ = schema.get("type")
    column = _COLUMN_TYPES.get(type_) if isinstance(type_, str) else None  # a list of types, or none, is any JSON
    description = schema.get("description", "")
    if column is None:
        field = JSONDocument(schema, null=not required, help_text=description)
    else:
        field = column(null=not required, help_text=description)
    field.json_schema = schema
    if "default" in schema:  # each object its own copy (a JSON default may be a list or an object)
        field.default = functools.partial(copy.deepcopy, schema["default"])
    return field


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text)


def _create_table(model: type[ExtensionObject]) -> None:
    database, table = model._meta.database, model._meta.table_name
    database.create_tables([model], safe=True)
    database.execute_sql(f'CREATE INDEX IF NOT EXISTS "{table}_created_at_id" ON "{table}" (created_at, id)')
    database.execute_sql(
        f'CREATE INDEX IF NOT EXISTS "{table}_unreconciled" ON "{table}" (updated_at) '
        "WHERE generation <> observed_generation OR deletion_scheduled IS NOT NULL"
    )


def _evolve(old: type[ExtensionObject], new: type[ExtensionObject]) -> None:
    """Change ``old``'s table into ``new``'s; InvalidObject when that is not a compatible change."""
    where = f"kind {old.short_kind!r}"
    if (old.plural, old.reconcilable) != (new.plural, new.reconcilable):
        raise InvalidObject(f"{where}: its plural and whether it is reconciled cannot change: register a new version")
    old_fields, new_fields = old._meta.fields, new._meta.fields
    migrator = PostgresqlMigrator(old._meta.database)
    table = old._meta.table_name
    for name in old.spec_fields:
        field = new_fields.get(name)
        if field is None:
            raise InvalidObject(f"{where}: property {name!r} cannot be removed: register a new version")
        if field.field_type != old_fields[name].field_type:
            raise InvalidObject(f"{where}: property {name!r} cannot change its type: register a new version")
        if old_fields[name].null and not field.null:
            raise InvalidObject(f"{where}: property {name!r} cannot become required: register a new version")
        if field.null and not old_fields[name].null:
            migrator.drop_not_null(table, name).run()
    for name in new.spec_fields:
        if name not in old_fields:
            field = new_fields[name]
            if not field.null:
                raise InvalidObject(f"{where}: a new property ({name!r}) must be optional: register a new version")
            migrator.add_column(table, name, field).run()


def _must_not_be_proxied(extension: Extension) -> None:
    for route in ExtensionApiRoute.select(ExtensionApiRoute.prefix, ExtensionApiRoute.extension):
        if route.prefix.startswith(extension.prefix) or extension.prefix.startswith(route.prefix):
            raise Conflict(
                f"{extension.prefix} is routed to the API server of extension {route.extension!r} ({route.prefix})"
            )


def served_prefixes() -> list[str]:
    """The path prefixes of every registered extension version (``/<domain>/<version>/``)."""
    return [
        f"/{domain}/{version}/" for domain, version in Extension.select(Extension.domain, Extension.version).tuples()
    ]
