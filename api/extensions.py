"""Extensions over HTTP: ``/v0/extensions`` registers kinds, and the sink serves their objects.

``POST /v0/extensions`` registers one version of an extension's API (its
domain, kinds with their JSON Schemas, and the queue of its controller);
``PUT /v0/extensions/{id}`` replaces it with a compatible change;
``DELETE /v0/extensions/{id}`` unregisters it (409 while its kinds have
objects, unless ``?force=true``). The change is in the database, so every
API replica serves it within seconds, at once on a request for a kind it
has not seen yet (:class:`models.extension_kinds.ExtensionCatalog`).

:class:`ExtensionSink` takes the paths no core route matched whose first
segment is a domain: ``/<domain>/<version>/<plural>[/<id>]`` of a
registered kind is served by the same generic resources as the core kinds
(validation, lifecycle, ETags, pagination, filters, outbox); anything else
goes to the extension API servers' proxy. An extension's controller reports
through two more paths of each reconciled kind: ``PUT …/{id}/status`` (its
outcome for the generation it read, with an event) and
``POST …/{id}/confirm-deletion`` (teardown done: the row goes).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

import falcon

from models import store
from models.errors import Conflict, InvalidObject, NotFound, StoreError, sqlstate
from models.events import NORMAL, WARNING, record_event
from models.extension_kinds import (
    Extension,
    ExtensionCatalog,
    ExtensionObject,
    register_extension,
    unregister_extension,
    update_extension,
)
from models.transactions import run_in_transaction

from .resources import Collection, Item, Publisher, RecordCollection, RecordItem, as_json

__all__ = ["ExtensionCollection", "ExtensionItem", "ExtensionSink", "STATUS_BODY_FIELDS"]

#: What ``PUT …/{id}/status`` takes besides the lifecycle flags of :data:`models.store.STATUS_FLAGS`.
STATUS_BODY_FIELDS = frozenset({"generation", "status", "observed", "event"})

#: SQLSTATEs of a query on a table or column that is not there (any more): undefined table, undefined column.
_STALE_KIND = frozenset({"42P01", "42703"})
_OBJECT_PATH = re.compile(
    r"/(?P<domain>[^/]+)/(?P<version>[^/]+)/(?P<plural>[^/]+)"
    r"(?:/(?P<object_id>[^/]+)(?:/(?P<action>status|confirm-deletion))?)?"
)


class ExtensionCollection(RecordCollection):
    """``/v0/extensions``: list, register."""

    def __init__(self, catalog: ExtensionCatalog) -> None:
        super().__init__(Extension)
        self.catalog = catalog

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        extension = register_extension(_body(req))
        self.catalog.refresh(force=True)
        resp.location = f"/v0/extensions/{extension.id}"
        _answer(resp, extension, falcon.HTTP_201)


class ExtensionItem(RecordItem):
    """``/v0/extensions/{object_id}``: get, replace (compatible changes only), unregister."""

    def __init__(self, catalog: ExtensionCatalog) -> None:
        super().__init__(Extension)
        self.catalog = catalog

    def on_get(self, req: falcon.Request, resp: falcon.Response, object_id: str) -> None:
        _answer(resp, store.get(Extension, object_id))

    def on_put(self, req: falcon.Request, resp: falcon.Response, object_id: str) -> None:
        if_match = req.get_header("If-Match")
        extension = update_extension(object_id, _body(req), if_match=if_match.strip('"') if if_match else None)
        self.catalog.refresh(force=True)
        _answer(resp, extension)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, object_id: str) -> None:
        unregister_extension(object_id, force=req.get_param_as_bool("force", default=False))
        self.catalog.refresh(force=True)
        resp.status = falcon.HTTP_204


class ExtensionSink:
    """Extension kinds' objects, or else the proxy to extensions' own API servers."""

    def __init__(self, catalog: ExtensionCatalog, publish: Publisher, proxy: Callable, *, proxied: Callable) -> None:
        self.catalog = catalog
        self.publish = publish
        self.proxy = proxy
        #: Whether a path belongs to an extension API server's route (checked before a forced catalog refresh).
        self.proxied = proxied
        self._resources: dict[tuple[str, str, str], tuple[type[ExtensionObject], dict[str, Any]]] = {}

    def __call__(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self._serve(req, resp)
        except StoreError as exc:
            # The kind's table changed under this replica's catalog (unregistered, or registered
            # again, through another replica a moment ago): the request failed whole; once more
            # on the kinds as they are now.
            if sqlstate(exc) not in _STALE_KIND or not self.catalog.refresh(force=True):
                raise
            self._serve(req, resp)

    def _serve(self, req: falcon.Request, resp: falcon.Response) -> None:
        match = _OBJECT_PATH.fullmatch(req.path)
        model = self._model(*match.group("domain", "version", "plural"), req.path) if match else None
        if model is None:
            self.proxy(req, resp)
            return
        object_id, action = match.group("object_id"), match.group("action")
        template = model.collection_path() + ("/{object_id}" if object_id else "") + (f"/{action}" if action else "")
        req.context.route_template = template  # the metrics' route label, as for a core route
        resource = self._resources_of(model)[action or ("item" if object_id else "collection")]
        responder = getattr(resource, f"on_{req.method.lower()}", None)
        if responder is None:
            allowed = [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if hasattr(resource, f"on_{m.lower()}")]
            raise falcon.HTTPMethodNotAllowed(allowed)
        if object_id is None:
            responder(req, resp)
        else:
            responder(req, resp, object_id)

    def _model(self, domain: str, version: str, plural: str, path: str) -> Optional[type[ExtensionObject]]:
        model = self.catalog.serving(domain, version, plural, force_on_miss=False)
        if model is None and not self.proxied(path):  # perhaps registered a moment ago, through any replica
            model = self.catalog.serving(domain, version, plural)
        return model

    def _resources_of(self, model: type[ExtensionObject]) -> dict[str, Any]:
        key = (model.domain, model.version, model.plural)
        known = self._resources.get(key)
        if known is None or known[0] is not model:  # new, or rebuilt since its extension changed
            known = self._resources[key] = (
                model,
                {
                    "collection": Collection(model, self.publish),
                    "item": Item(model, self.publish),
                    "status": _Status(model),
                    "confirm-deletion": _ConfirmDeletion(model),
                },
            )
        return known[1]


class _Status:
    """``…/{object_id}/status``: the controller's outcome for the generation it reconciled."""

    def __init__(self, model: type[ExtensionObject]) -> None:
        self.model = model

    def on_put(self, req: falcon.Request, resp: falcon.Response, object_id: str) -> None:
        model = _reconciled(self.model)
        body = _body(req)
        unknown = set(body) - STATUS_BODY_FIELDS - store.STATUS_FLAGS
        if unknown:
            raise InvalidObject(f"unknown field {sorted(unknown)[0]!r} of a status report")
        generation, status = body.get("generation"), body.get("status", {})
        if not isinstance(generation, int) or isinstance(generation, bool) or not 0 <= generation < 2**63:
            raise InvalidObject("field 'generation' must be the integer generation that was reconciled")
        flags = {name: body[name] for name in store.STATUS_FLAGS & set(body)}
        if not all(isinstance(value, bool) for value in (*flags.values(), body.get("observed", True))):
            raise InvalidObject("the lifecycle flags and 'observed' must be booleans")
        event = _event(body.get("event"))

        def write() -> Any:
            if not store.write_status(
                model, object_id, generation=generation, status=status, observed=body.get("observed", True), **flags
            ):
                obj = store.get(model, object_id)  # NotFound when it is gone
                raise Conflict(f"{model.kind} {obj.id} is at generation {obj.generation}, not {generation}")
            if event is not None:
                record_event(model.kind, object_id, event["reason"], event["message"], type=event["type"])
            return store.get(model, object_id)

        obj = run_in_transaction(write)
        resp.etag = str(obj.resource_version)
        resp.media = as_json(obj)


class _ConfirmDeletion:
    """``…/{object_id}/confirm-deletion``: the controller tore the object down; its row goes."""

    def __init__(self, model: type[ExtensionObject]) -> None:
        self.model = model

    def on_post(self, req: falcon.Request, resp: falcon.Response, object_id: str) -> None:
        if not store.confirm_deletion(_reconciled(self.model), object_id):
            raise NotFound(f"no {self.model.kind} with id {object_id!r}")
        resp.status = falcon.HTTP_204


def _reconciled(model: type[ExtensionObject]) -> type[ExtensionObject]:
    if not model.reconcilable:
        raise falcon.HTTPMethodNotAllowed([], description=f"{model.kind} objects are not reconciled")
    return model


def _event(event: Any) -> Optional[dict[str, str]]:
    if event is None:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("reason"), str) or not event["reason"]:
        raise InvalidObject("field 'event' must be an object with a 'reason' (and a 'message', a 'type')")
    kind = event.get("type", NORMAL)
    if kind not in (NORMAL, WARNING):
        raise InvalidObject(f"field 'event'['type'] must be {NORMAL!r} or {WARNING!r}")
    return {"reason": event["reason"], "message": str(event.get("message") or event["reason"]), "type": kind}


def _body(req: falcon.Request) -> dict[str, Any]:
    body = req.get_media()
    if not isinstance(body, dict):
        raise InvalidObject("the body must be a JSON object")
    return body


def _answer(resp: falcon.Response, extension: Extension, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.etag = str(extension.resource_version)
    resp.media = as_json(extension)
