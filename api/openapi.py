"""The API's OpenAPI 3.1 document, served at ``/openapi.json``.

It is built from what the API really does, so that it can say neither more nor less: the paths and
methods come from the app's router, read with :mod:`falcon.inspect` (the 405 and OPTIONS responders
Falcon adds by itself are left out), and the bodies, filters and descriptions of each kind come from
:mod:`models.registry` through :func:`models.schema.fields_of`. A route that is neither a kind's nor
one of the known ones is still listed, with what little can be said about it. Inspecting the router
reads source files (a few hundred milliseconds), so the document is cached per app until the set of
kinds changes.
"""

from __future__ import annotations

import collections
import re
import threading
from typing import Any, Callable, Iterable, Optional

import falcon
import falcon.inspect

from models import registry
from models.base import KindModel, ReconciledModel, RecordModel
from models.extension_kinds import ExtensionCatalog, ExtensionObject
from models.schema import FieldInfo, fields_of
from models.store import MAX_PAGE_SIZE, STATUS_FLAGS
from models.validation import filterable

from .discovery import server_version
from .resources import API_VERSION, LIST_PARAMETERS

__all__ = ["openapi_document", "OpenApi", "routed_operations", "schema_ref", "OPENAPI_VERSION"]

OPENAPI_VERSION = "3.1.0"

#: Methods an operation may have in a Path Item (OpenAPI 3.1); others cannot be documented.
HTTP_METHODS = ("get", "post", "patch", "put", "delete", "head", "options", "trace")

#: Error answers, by status: (component name, when).
_PROBLEMS = {
    "400": ("BadRequest", "The body is not well-formed JSON."),
    "401": ("Unauthorized", "No bearer token, or not a valid one."),
    "404": ("NotFound", "No object has this id."),
    "409": ("Conflict", "The write clashes with stored state: a taken name, a referenced object, a deletion."),
    "412": ("PreconditionFailed", "If-Match names a resource_version the object no longer has."),
    "413": ("ContentTooLarge", "The body is over the size limit (1 MiB by default)."),
    "415": ("UnsupportedMediaType", "The body is not sent as JSON."),
    "422": ("InvalidObject", "An unknown, server-managed, missing or invalid field, filter, limit or cursor."),
    "500": ("InternalError", "The server failed; the detail names the request id to report."),
    "503": ("Unavailable", "The database is unavailable or too busy, or the server is not configured."),
}

_CACHE_SIZE = 4
_cache: collections.OrderedDict[int, tuple[falcon.App, tuple, dict[str, Any]]] = collections.OrderedDict()
_cache_lock = threading.Lock()


def openapi_document(
    app: falcon.App,
    *,
    open_paths: Optional[frozenset[str]] = None,
    extension_kinds: Iterable[type[ExtensionObject]] = (),
) -> dict[str, Any]:
    """The OpenAPI document of ``app``: every route it serves, every core kind and ``extension_kinds``.

    ``open_paths`` answer without a token (by default the app module's
    ``OPEN_PATHS``). The document is cached, and shared: do not change it.
    """
    if open_paths is None:
        from .app import OPEN_PATHS  # the app module imports this one

        open_paths = OPEN_PATHS
    key = (tuple(registry.kinds()) + tuple(extension_kinds), open_paths)
    with _cache_lock:
        cached = _cache.get(id(app))
        if cached is not None and cached[0] is app and cached[1] == key:
            _cache.move_to_end(id(app))
            return cached[2]
    document = _build(app, kinds=key[0], open_paths=open_paths)
    with _cache_lock:
        _cache[id(app)] = (app, key, document)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return document


def routed_operations(app: falcon.App) -> dict[str, list[str]]:
    """The methods (lower case) each path template of ``app`` responds to, Falcon's own responders left out."""
    routed: dict[str, list[str]] = {}
    for route in falcon.inspect.inspect_routes(app):
        methods = [m.method.lower() for m in route.methods if not m.internal]
        routed.setdefault(_openapi_path(route.path), []).extend(methods)
    return routed


def schema_ref(name: str) -> dict[str, str]:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


class OpenApi:
    """``/openapi.json``"""

    def __init__(self, app: falcon.App, catalog: ExtensionCatalog) -> None:
        self.app = app
        self.catalog = catalog

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = openapi_document(self.app, extension_kinds=self.catalog.models())


# Building -------------------------------------------------------------------------


def _build(app: falcon.App, *, kinds: Iterable[type[KindModel]], open_paths: frozenset[str]) -> dict[str, Any]:
    kinds = list(kinds)
    routes = _kind_routes(kinds)
    used_ids: set[str] = set()
    paths: dict[str, Any] = {}
    routed = routed_operations(app)
    for model in kinds:  # extension kinds are served by the extension sink, not by routes
        if issubclass(model, ExtensionObject):
            routed[model.collection_path()] = ["get", "post"]
            routed[f"{model.collection_path()}/{{object_id}}"] = ["get", "patch", "put", "delete"]
            if model.reconcilable:
                routed[f"{model.collection_path()}/{{object_id}}/status"] = ["put"]
                routed[f"{model.collection_path()}/{{object_id}}/confirm-deletion"] = ["post"]
    for path, methods in routed.items():
        item: dict[str, Any] = {}
        parameters = _path_parameters(path)
        if parameters:
            item["parameters"] = parameters
        for method in (m for m in HTTP_METHODS if m in methods):
            operation = _operation(path, method, routes.get(path))
            operation["operationId"] = _unique(operation["operationId"], used_ids)
            if path in open_paths:
                operation["security"] = []
            else:
                operation["responses"].setdefault("401", _problem_ref("401"))
            operation["responses"].setdefault("500", _problem_ref("500"))
            operation["responses"] = dict(sorted(operation["responses"].items()))
            item[method] = operation
        if any(m in item for m in HTTP_METHODS):
            paths[path] = item
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "threeport API",
            "version": server_version(),
            "summary": "Declare apps and the infrastructure they need; the control plane reconciles them.",
            "description": _DESCRIPTION,
        },
        "tags": [{"name": m.kind, "description": m.summary or m.kind} for m in kinds]
        + [{"name": "API", "description": "Probes, versions and what this API serves."}]
        + [{"name": "Operations", "description": _OPERATIONS_TAG}],
        "paths": paths,
        "components": _components(kinds),
        "security": [{"bearer": []}],
    }


_DESCRIPTION = (
    "Every kind is served at `/v0/<plural>` (list, create) and `/v0/<plural>/{object_id}`. "
    "Send `Authorization: Bearer <token>` except on the routes marked as open. "
    "Errors are `application/problem+json` (RFC 9457). Reconciled objects carry their "
    "`resource_version` as the `ETag`; send it back as `If-Match` to make a write conditional (412 otherwise). "
    "Lists are pages: pass the `next` cursor back as `after`."
)


def _openapi_path(template: str) -> str:
    """Falcon's ``{name:converter(args)}`` fields as OpenAPI's ``{name}``."""
    return re.sub(r"{(\w+)(?::[^}]*)?}", r"{\1}", template)


def _path_parameters(path: str) -> list[dict[str, Any]]:
    parameters = []
    for name in re.findall(r"{(\w+)}", path):
        if name in ("object_id", "queue"):
            parameters.append({"$ref": f"#/components/parameters/{name}"})
        else:
            parameters.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
    return parameters


def _unique(operation_id: str, used: set[str]) -> str:
    candidate, n = operation_id, 2
    while candidate in used:
        candidate, n = f"{operation_id}{n}", n + 1
    used.add(candidate)
    return candidate


def _kind_routes(kinds: list[type[KindModel]]) -> dict[str, tuple[type[KindModel], str]]:
    """Path template → (kind, role) for the routes :func:`api.app.create_app` gives every kind."""
    routes = {}
    for model in kinds:
        routes[model.collection_path()] = (model, "collection")
        routes[f"{model.collection_path()}/{{object_id}}"] = (model, "item")
        routes[f"/{model.plural}/versions"] = (model, "versions")
        routes[f"{model.collection_path()}/{{object_id}}/status"] = (model, "status")
        routes[f"{model.collection_path()}/{{object_id}}/confirm-deletion"] = (model, "confirm-deletion")
    return routes


def _name(model: type[KindModel]) -> str:
    """The kind as an identifier (operation ids, schema names).

    ``acmecorp.com/v1/FancyWorkload`` → ``AcmecorpComV1FancyWorkload``; core kinds stay as they are.
    """
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", model.kind))


def _operation(path: str, method: str, kind_route: Optional[tuple[type[KindModel], str]]) -> dict[str, Any]:
    if kind_route is not None:
        model, role = kind_route
        build = _KIND_OPERATIONS.get((role, method))
        if build is not None and _fits(model, role, method):
            operation = build(model)
            operation.setdefault("tags", [model.kind])
            if model.summary and "description" not in operation:
                operation["description"] = model.summary
            return operation
    build = _API_OPERATIONS.get((path, method))
    if build is not None:
        return build()
    return _unknown_operation(path, method)


def _fits(model: type[KindModel], role: str, method: str) -> bool:
    """Whether the kind's family has the schemas a (role, method) operation refers to."""
    if role == "collection" and method == "post":
        return _writable(model)
    if role == "item" and method in ("patch", "put"):
        return issubclass(model, ReconciledModel)
    return True


def _writable(model: type[KindModel]) -> bool:
    return issubclass(model, ReconciledModel) or (issubclass(model, RecordModel) and model.client_writable)


def _unknown_operation(path: str, method: str) -> dict[str, Any]:
    """A route nothing here knows about: listed all the same, so the document never misses one."""
    words = [part for part in re.split(r"[^A-Za-z0-9]+", path) if part]
    return {
        "operationId": method + "".join(word.capitalize() for word in words),
        "summary": f"{method.upper()} {path}",
        "tags": ["API"],
        "responses": {"default": {"description": "Not described."}},
    }


# Kind operations ------------------------------------------------------------------


def _plural_words(model: type[KindModel]) -> str:
    return model.plural.replace("-", " ")


def _camel_plural(model: type[KindModel]) -> str:
    return "".join(word.capitalize() for word in model.plural.split("-"))


def _object_response(model: type[KindModel], description: str, *, headers: Iterable[str] = ()) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema_ref(_name(model))}},
    }
    if headers:
        response["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in headers}
    return response


def _etag(model: type[KindModel]) -> tuple[str, ...]:
    return ("ETag",) if issubclass(model, ReconciledModel) else ()


def _problems(*statuses: str) -> dict[str, Any]:
    return {status: _problem_ref(status) for status in statuses}


def _problem_ref(status: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{_PROBLEMS[status][0]}"}


def _body(schema: str, *, media_types: Iterable[str] = ("application/json",)) -> dict[str, Any]:
    return {"required": True, "content": {media: {"schema": schema_ref(schema)} for media in media_types}}


def _if_match() -> dict[str, str]:
    return {"$ref": "#/components/parameters/If-Match"}


def _list(model: type[KindModel]) -> dict[str, Any]:
    filters = [{"$ref": f"#/components/parameters/{_filter_key(model, info)}"} for info in _filters(model)]
    return {
        "operationId": f"list{_camel_plural(model)}",
        "summary": f"List {_plural_words(model)}",
        "description": f"{model.summary}\n\nOldest first (or newest first with `order=desc`), a page at a time. "
        "Filters are equality on a field.".strip(),
        "parameters": [
            {"$ref": "#/components/parameters/limit"},
            {"$ref": "#/components/parameters/after"},
            {"$ref": "#/components/parameters/order"},
            *filters,
        ],
        "responses": {
            "200": {
                "description": f"A page of {_plural_words(model)}.",
                "content": {"application/json": {"schema": schema_ref(f"{_name(model)}List")}},
            },
            **_problems("422", "503"),
        },
    }


def _create(model: type[KindModel]) -> dict[str, Any]:
    return {
        "operationId": f"create{_name(model)}",
        "summary": f"Create a {model.kind}",
        "requestBody": _body(f"{_name(model)}Create"),
        "responses": {
            "201": _object_response(model, f"The {model.kind} as stored.", headers=(*_etag(model), "Location")),
            **_problems("400", "409", "413", "415", "422", "503"),
        },
    }


def _get(model: type[KindModel]) -> dict[str, Any]:
    return {
        "operationId": f"get{_name(model)}",
        "summary": f"Get a {model.kind}",
        "responses": {
            "200": _object_response(model, f"The {model.kind}.", headers=_etag(model)),
            **_problems("404", "503"),
        },
    }


def _patch(model: type[KindModel]) -> dict[str, Any]:
    return {
        "operationId": f"update{_name(model)}",
        "summary": f"Change some fields of a {model.kind}",
        "parameters": [_if_match()],
        "requestBody": _body(f"{_name(model)}Update", media_types=("application/json", "application/merge-patch+json")),
        "responses": {
            "200": _object_response(model, f"The {model.kind} as changed.", headers=("ETag",)),
            **_problems("400", "404", "409", "412", "413", "415", "422", "503"),
        },
    }


def _put(model: type[KindModel]) -> dict[str, Any]:
    return {
        "operationId": f"replace{_name(model)}",
        "summary": f"Replace a {model.kind} (every writable field)",
        "parameters": [_if_match()],
        "requestBody": _body(f"{_name(model)}Replace"),
        "responses": {
            "200": _object_response(model, f"The {model.kind} as replaced.", headers=("ETag",)),
            **_problems("400", "404", "409", "412", "413", "415", "422", "503"),
        },
    }


def _delete(model: type[KindModel]) -> dict[str, Any]:
    if not issubclass(model, ReconciledModel):
        return {
            "operationId": f"delete{_name(model)}",
            "summary": f"Delete a {model.kind}",
            "responses": {"204": {"description": "Deleted."}, **_problems("404", "503")},
        }
    return {
        "operationId": f"delete{_name(model)}",
        "summary": f"Schedule the deletion of a {model.kind}",
        "description": f"{model.summary}\n\nThe reconciler removes it; GET answers 404 once it has.".strip(),
        "parameters": [_if_match()],
        "responses": {
            "202": _object_response(model, "Deletion is scheduled.", headers=("ETag",)),
            **_problems("404", "409", "412", "503"),
        },
    }


def _versions(model: type[KindModel]) -> dict[str, Any]:
    return {
        "operationId": f"get{_name(model)}Versions",
        "summary": f"API versions that serve {model.kind}",
        "responses": {
            "200": {
                "description": "The versions.",
                "content": {"application/json": {"schema": schema_ref("KindVersions")}},
            }
        },
    }


def _report_status(model: type[KindModel]) -> dict[str, Any]:
    flags = {name: {"type": "boolean"} for name in sorted(STATUS_FLAGS)}
    event = {
        "type": "object",
        "properties": {
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "type": {"enum": ["Normal", "Warning"]},
        },
        "required": ["reason"],
    }
    body = {
        "type": "object",
        "properties": {
            "generation": {"type": "integer", "description": "The generation the controller reconciled."},
            "status": {"type": "object", "description": "Keys merged into the object's status."},
            "observed": {"type": "boolean", "default": True, "description": "Whether the generation is done."},
            "event": event,
            **flags,
        },
        "required": ["generation"],
        "additionalProperties": False,
    }
    return {
        "operationId": f"reportStatusOf{_name(model)}",
        "summary": f"Report the reconcile of a {model.kind} (its extension's controller)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": _object_response(model, "The object with the report written.", headers=("ETag",)),
            **_problems("404", "409", "422", "503"),
        },
    }


def _confirm_deletion(model: type[KindModel]) -> dict[str, Any]:
    return {
        "operationId": f"confirmDeletionOf{_name(model)}",
        "summary": f"Confirm a {model.kind} is torn down (its extension's controller): the object goes",
        "responses": {"204": {"description": "Removed."}, **_problems("404", "409", "503")},
    }


_KIND_OPERATIONS: dict[tuple[str, str], Callable[[type[KindModel]], dict[str, Any]]] = {
    ("status", "put"): _report_status,
    ("confirm-deletion", "post"): _confirm_deletion,
    ("collection", "get"): _list,
    ("collection", "post"): _create,
    ("item", "get"): _get,
    ("item", "patch"): _patch,
    ("item", "put"): _put,
    ("item", "delete"): _delete,
    ("versions", "get"): _versions,
}


# The API's own routes -------------------------------------------------------------


def _json_answer(operation_id: str, summary: str, schema: str, **extra: Any) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        operation = {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["API"],
            "responses": {
                "200": {"description": summary, "content": {"application/json": {"schema": schema_ref(schema)}}}
            },
        }
        operation.update(extra)
        return operation

    return build


def _readiness() -> dict[str, Any]:
    operation = _json_answer("getReadiness", "Whether the API's dependencies answer", "Readiness")()
    operation["responses"]["503"] = {
        "description": "A dependency does not answer; `checks` says which and why.",
        "content": {"application/problem+json": {"schema": schema_ref("Problem")}},
    }
    return operation


def _text_answer(operation_id: str, summary: str, media_type: str, what: str) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        return {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["API"],
            "responses": {"200": {"description": what, "content": {media_type: {"schema": {"type": "string"}}}}},
        }

    return build


_docs = _text_answer("getDocs", "This document as a web page", "text/html", "An HTML page.")
_metrics = _text_answer(
    "getMetrics", "Prometheus metrics of this API process", "text/plain", "Prometheus text exposition format."
)


_OPERATIONS_TAG = (
    "The work queues, their dead letters and the live workers, as `threeport queues` and `threeport workers` "
    "show them; 503 when NATS does not answer or the API runs without it."
)


def _queues_operation(
    operation_id: str, summary: str, answer: str, *, description: str, problems: Iterable[str] = (), **extra: Any
) -> Callable[[], dict[str, Any]]:
    """An operation on the queues or workers: a JSON ``answer`` (a component schema), and 503 when NATS is away."""

    def build() -> dict[str, Any]:
        operation = {
            "operationId": operation_id,
            "summary": summary,
            "description": description,
            "tags": ["Operations"],
            "responses": {
                "200": {"description": summary, "content": {"application/json": {"schema": schema_ref(answer)}}},
                **_problems(*problems, "503"),
            },
        }
        operation.update(extra)
        return operation

    return build


_DEAD_LETTER_CHOICE = {
    "description": 'Which dead letters: `{"ids": [...]}` (message ids, or `seq:N`) or `{"all": true}`.',
    "content": {"application/json": {"schema": schema_ref("DeadLetterChoice")}},
}

_QUEUE_OPERATIONS: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
    (f"/{API_VERSION}/queues", "get"): _queues_operation(
        "listQueues",
        "Every queue with its ready, delayed, in-flight and dead messages",
        "QueueList",
        description="Read from the queues' streams and consumers at each call, like `threeport queues`.",
    ),
    (f"/{API_VERSION}/queues/{{queue}}/dead-letters", "get"): _queues_operation(
        "listDeadLetters",
        "The dead letters of a queue: messages no worker could process",
        "DeadLetterList",
        description="Oldest first; `kind` and `object_id` name the object of a reconcile message.",
        problems=("404", "422"),
        parameters=[
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": "Show at most this many.",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            }
        ],
    ),
    (f"/{API_VERSION}/queues/{{queue}}/dead-letters", "delete"): _queues_operation(
        "purgeDeadLetters",
        "Drop dead letters of a queue for good",
        "PurgeReport",
        description='Choose them with the body (`{"ids": [...]}` or `{"all": true}`) or, without a body, '
        "with the query (`?id=…&id=…` or `?all=true`).",
        problems=("400", "404", "415", "422"),
        parameters=[
            {
                "name": "id",
                "in": "query",
                "required": False,
                "description": "A dead letter to drop (message id or `seq:N`); repeat for several.",
                "schema": {"type": "array", "items": {"type": "string"}},
                "style": "form",
                "explode": True,
            },
            {
                "name": "all",
                "in": "query",
                "required": False,
                "description": "Drop every dead letter of the queue.",
                "schema": {"type": "boolean", "default": False},
            },
        ],
        requestBody={**_DEAD_LETTER_CHOICE, "required": False},
    ),
    (f"/{API_VERSION}/queues/{{queue}}/dead-letters/retry", "post"): _queues_operation(
        "retryDeadLetters",
        "Put dead letters back on their queue with a fresh retry budget",
        "RetryReport",
        description="Like `threeport queues retry`: ids that are not dead letters of the queue are reported as "
        "missing, the others retried.",
        problems=("400", "404", "415", "422"),
        requestBody={**_DEAD_LETTER_CHOICE, "required": True},
    ),
    (f"/{API_VERSION}/workers", "get"): _queues_operation(
        "listWorkers",
        "The live worker processes, from their heartbeats",
        "WorkerList",
        description="Like `threeport workers`: a stopped worker's entry goes at once, a killed one's when its "
        "heartbeat expires.",
    ),
}

_API_OPERATIONS: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
    **_QUEUE_OPERATIONS,
    ("/healthz", "get"): _json_answer("getHealth", "Whether the API process answers", "Health"),
    ("/readyz", "get"): _readiness,
    ("/version", "get"): _json_answer("getVersion", "The server's version and the API versions it serves", "Version"),
    (f"/{API_VERSION}/kinds", "get"): _json_answer(
        "listKinds", "Every kind, its path, routes and fields", "KindCatalog"
    ),
    ("/openapi.json", "get"): _json_answer("getOpenApiDocument", "This OpenAPI document", "OpenApiDocument"),
    ("/docs", "get"): _docs,
    ("/ui", "get"): _text_answer(
        "getDashboard", "The dashboard: objects, queues and workers in a web page", "text/html", "An HTML page."
    ),
    ("/metrics", "get"): _metrics,
}


# Components -----------------------------------------------------------------------


def _components(kinds: list[type[KindModel]]) -> dict[str, Any]:
    schemas = dict(_SHARED_SCHEMAS)
    parameters = dict(_SHARED_PARAMETERS)
    for model in kinds:
        schemas.update(_kind_schemas(model))
        for info in _filters(model):
            parameters[_filter_key(model, info)] = _filter_parameter(info)
    return {
        "schemas": schemas,
        "parameters": parameters,
        "headers": {
            "ETag": {
                "description": "The object's resource_version, quoted; send it back as If-Match.",
                "schema": {"type": "string"},
            },
            "Location": {"description": "Where the new object is served.", "schema": {"type": "string"}},
        },
        "responses": {
            name: {
                "description": when,
                "content": {"application/problem+json": {"schema": schema_ref("Problem")}},
            }
            for name, when in _PROBLEMS.values()
        },
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token of the deployment (THREEPORT_API_TOKEN).",
            }
        },
    }


def _kind_schemas(model: type[KindModel]) -> dict[str, Any]:
    infos = fields_of(model).values()
    shown = [info for info in infos if not info.secret]
    writable = [info for info in infos if info.writable]
    schemas: dict[str, Any] = {
        _name(model): {
            "type": "object",
            "description": model.summary or model.kind,
            "properties": {
                "kind": {"const": model.kind, "description": "The kind's name."},
                **{info.name: _property(info, read_only=not info.writable) for info in shown},
            },
            "required": ["kind", *(info.name for info in shown)],
        },
        f"{_name(model)}List": {
            "type": "object",
            "description": f"A page of {_plural_words(model)}.",
            "properties": {
                "items": {"type": "array", "items": schema_ref(_name(model))},
                "next": {
                    "anyOf": [{"type": "string"}, {"type": "null"}],
                    "description": "The cursor of the next page (pass it as `after`); null on the last page.",
                },
            },
            "required": ["items", "next"],
        },
    }
    if _writable(model):
        schemas[f"{_name(model)}Create"] = _body_schema(
            model, writable, required=[i.name for i in writable if i.required], what="creates"
        )
    if issubclass(model, ReconciledModel):
        schemas[f"{_name(model)}Update"] = _body_schema(model, writable, required=[], what="changes (PATCH)")
        schemas[f"{_name(model)}Replace"] = _body_schema(
            model, writable, required=[i.name for i in writable], what="replaces (PUT: every writable field)"
        )
    return schemas


def _body_schema(model: type[KindModel], infos: list[FieldInfo], *, required: list[str], what: str) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "description": f"What a client {what} of a {model.kind}.",
        "properties": {info.name: _property(info, write_only=info.secret) for info in infos},
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _property(info: FieldInfo, *, read_only: bool = False, write_only: bool = False) -> dict[str, Any]:
    schema = info.value_schema()
    if info.description:
        schema["description"] = info.description
    if info.references:
        schema["x-references"] = info.references
    if read_only:
        schema["readOnly"] = True
    if write_only:
        schema["writeOnly"] = True
    return schema


def _filters(model: type[KindModel]) -> list[FieldInfo]:
    return [info for info in fields_of(model).values() if filterable(info) and info.name not in LIST_PARAMETERS]


def _filter_key(model: type[KindModel], info: FieldInfo) -> str:
    return f"{_name(model)}.{info.name}"


def _filter_parameter(info: FieldInfo) -> dict[str, Any]:
    schema = {key: value for key, value in info.schema.items() if key != "default"}
    description = f"Only the objects whose {info.name} equals this value."
    if info.description:
        description += f" ({info.description})"
    return {"name": info.name, "in": "query", "required": False, "description": description, "schema": schema}


_SHARED_PARAMETERS: dict[str, Any] = {
    "limit": {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "How many objects a page holds.",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": 50},
    },
    "after": {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "The `next` cursor of the previous page.",
        "schema": {"type": "string"},
    },
    "order": {
        "name": "order",
        "in": "query",
        "required": False,
        "description": "By creation time: `asc` oldest first, `desc` newest first.",
        "schema": {"type": "string", "enum": ["asc", "desc"], "default": "asc"},
    },
    "object_id": {
        "name": "object_id",
        "in": "path",
        "required": True,
        "description": "The object's id (any other text is a 404).",
        "schema": {"type": "string", "format": "uuid"},
    },
    "queue": {
        "name": "queue",
        "in": "path",
        "required": True,
        "description": "The queue's name, e.g. `workloads` (a name without a stream is a 404).",
        "schema": {"type": "string"},
    },
    "If-Match": {
        "name": "If-Match",
        "in": "header",
        "required": False,
        "description": "The resource_version (ETag) the write expects; 412 when the object has moved on.",
        "schema": {"type": "string"},
    },
}


def _count(description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "description": description}


_STRINGS = {"type": "array", "items": {"type": "string"}}

_QUEUE_SCHEMAS: dict[str, Any] = {
    "QueueList": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": schema_ref("QueueStats")}},
        "required": ["items"],
    },
    "QueueStats": {
        "type": "object",
        "description": "What one queue holds right now.",
        "properties": {
            "queue": {"type": "string"},
            "ready": _count("Messages waiting to be delivered."),
            "delayed": _count("Messages scheduled for later (delays and retry backoff)."),
            "in_flight": _count("Messages delivered to a worker and not acknowledged yet."),
            "redelivered": _count("Messages delivered more than once."),
            "dead": _count("Dead letters kept for this queue."),
            "consumers": _count("Worker processes attached to the queue."),
        },
        "required": ["queue", "ready", "delayed", "in_flight", "redelivered", "dead", "consumers"],
    },
    "DeadLetterList": {
        "type": "object",
        "properties": {
            "queue": {"type": "string"},
            "items": {"type": "array", "items": schema_ref("DeadLetter")},
            "truncated": {"type": "boolean", "description": "Whether there are more than `limit`."},
        },
        "required": ["queue", "items", "truncated"],
    },
    "DeadLetter": {
        "type": "object",
        "description": "A message no worker could process, kept for inspection and retry.",
        "properties": {
            "id": {"type": "string", "description": "The message id (`seq:N` for a body that is no message)."},
            "seq": {"type": "integer", "description": "Its sequence in the dead-letter stream."},
            "actor": {"type": "string"},
            "kind": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "The object's kind."},
            "object_id": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "The object's id."},
            "args": {"anyOf": [{"type": "array"}, {"type": "null"}]},
            "kwargs": {"anyOf": [{"type": "object"}, {"type": "null"}]},
            "reason": {
                "type": "string",
                "description": "`failed` (retries exhausted), `max-deliveries` (never acknowledged) or `undecodable`.",
            },
            "error": {"type": "string", "description": "The last error, on one line."},
            "dead_at": {"type": "string", "format": "date-time"},
            "deliveries": {"type": "integer", "minimum": 0},
        },
        "required": ["id", "seq", "actor", "kind", "object_id", "args", "kwargs", "reason", "error", "dead_at"],
    },
    "DeadLetterChoice": {
        "type": "object",
        "description": "Which dead letters: by id, or all of them (one of the two).",
        "properties": {"ids": {**_STRINGS, "minItems": 1}, "all": {"type": "boolean"}},
        "additionalProperties": False,
    },
    "RetryReport": {
        "type": "object",
        "properties": {
            "queue": {"type": "string"},
            "retried": {**_STRINGS, "description": "Ids put back on the queue."},
            "missing": {**_STRINGS, "description": "Ids asked for that are not dead letters of the queue."},
            "failed": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"id": {"type": "string"}, "reason": {"type": "string"}},
                    "required": ["id", "reason"],
                },
                "description": "Dead letters that could not be retried, and why.",
            },
        },
        "required": ["queue", "retried", "missing", "failed"],
    },
    "PurgeReport": {
        "type": "object",
        "properties": {
            "queue": {"type": "string"},
            "purged": _count("How many dead letters were dropped."),
            "ids": {**_STRINGS, "description": "Ids dropped, when they were chosen by id."},
            "missing": {**_STRINGS, "description": "Ids asked for that are not dead letters of the queue."},
        },
        "required": ["queue", "purged", "missing"],
    },
    "WorkerList": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": schema_ref("Worker")}},
        "required": ["items"],
    },
    "Worker": {
        "type": "object",
        "description": "One worker process, as its last heartbeat describes it.",
        "properties": {
            "id": {"type": "string", "description": "`<host>-<pid>`."},
            "host": {"type": "string"},
            "pid": {"type": "integer"},
            "queues": _STRINGS,
            "in_flight": _count("Messages its threads were processing."),
            "started_at": {"type": "string", "format": "date-time"},
            "heartbeat_at": {"type": "string", "format": "date-time"},
            "age_seconds": {"type": "number", "description": "Seconds since that heartbeat, by this server's clock."},
            "version": {"type": "string"},
            "ready": {"type": "boolean", "description": "Whether every consumer of the worker was pulling."},
            "state": {"enum": ["running", "stopping"]},
            "ttl": {"type": "number", "description": "Seconds the entry lives without a newer heartbeat."},
        },
        "required": ["id", "host", "pid", "queues", "in_flight", "heartbeat_at", "age_seconds", "ready", "state"],
    },
}

_SHARED_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "An error (RFC 9457 problem details).",
        "properties": {
            "type": {"type": "string", "description": "Always about:blank: the status says what kind of error."},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string", "description": "What went wrong, naming the field or object."},
            "instance": {"type": "string", "description": "The path asked for."},
            "request_id": {"type": "string", "description": "The request's X-Request-Id, to quote when reporting."},
            "errors": {"description": "Details of several errors, when there are."},
            "checks": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Readiness: each dependency check's result.",
            },
        },
        "required": ["type", "title", "status"],
    },
    "Health": {
        "type": "object",
        "properties": {"status": {"const": "ok"}},
        "required": ["status"],
    },
    "Readiness": {
        "type": "object",
        "properties": {
            "status": {"const": "ready"},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["status", "checks"],
    },
    "Version": {
        "type": "object",
        "properties": {
            "server": {"type": "string", "description": "The server package's version."},
            "api_versions": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["server", "api_versions"],
    },
    "KindVersions": {
        "type": "object",
        "properties": {"kind": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}}},
        "required": ["kind", "versions"],
    },
    "KindCatalog": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": schema_ref("KindDescription")}},
        "required": ["items"],
    },
    "KindDescription": {
        "type": "object",
        "description": "One kind, for clients that adapt to the server they talk to.",
        "properties": {
            "kind": {"type": "string"},
            "plural": {"type": "string"},
            "path": {"type": "string"},
            "summary": {"type": "string"},
            "reconciled": {"type": "boolean"},
            "queue": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "writable": {"type": "boolean"},
            "fields": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "schema": {"type": "object"},
                        "writable": {"type": "boolean"},
                        "required": {"type": "boolean"},
                        "secret": {"type": "boolean"},
                        "references": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                        "description": {"type": "string"},
                    },
                    "required": ["name", "schema", "writable", "required", "secret", "references", "description"],
                },
            },
        },
        "required": ["kind", "plural", "path", "summary", "reconciled", "queue", "depends_on", "writable", "fields"],
    },
    "OpenApiDocument": {"type": "object", "description": "An OpenAPI 3.1 document."},
    **_QUEUE_SCHEMAS,
}
